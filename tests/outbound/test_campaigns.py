"""Campaign files: the shipped set, and clear errors naming the file and the path."""

from __future__ import annotations

from datetime import date, time

import pytest

from outbound.campaigns import (
    CampaignError,
    KnownSegments,
    SegmentFacts,
    load_campaigns,
    read_campaign,
)
from outbound.run import OutboundSettings, known_segments
from outbound.templates import campaign_content

KNOWN = KnownSegments(
    {
        "lapsed-physio-6-12mo": SegmentFacts("patient"),
        "referral-cases-expiring-30d": SegmentFacts("case"),
    }
)
GOOD = """
name: Test
segment: lapsed-physio-6-12mo
template: {local: reactivation}
priority: 10
schedule: {every: week, days: [mon, fri]}
"""


def parse(tmp_path, text: str | bytes, name: str = "my-campaign.yaml", known=KNOWN):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return read_campaign(path, known)


def test_starter_set_loads_against_the_shipped_segment_library(tmp_path):
    library = known_segments(OutboundSettings(str(tmp_path / "none.duckdb"), "", "UTC"))
    loaded = load_campaigns(known_segments=library)
    assert loaded.problems == []
    campaigns = loaded.campaigns
    by_slug = {c.slug: c for c in campaigns}
    # The five outbound types and the three case reminders.
    assert set(by_slug) == {
        "lapsed-physio-reactivation",
        "post-visit-follow-up",
        "birthday-greetings",
        "invoice-chasing",
        "waitlist-callback",
        "referral-expiring-reminder",
        "sessions-nearly-used",
        "invoiceable-nearly-used",
    }
    assert by_slug["birthday-greetings"].requires_explicit_consent
    assert by_slug["invoiceable-nearly-used"].notify_patient is False
    for slug in ("referral-expiring-reminder", "sessions-nearly-used", "invoiceable-nearly-used"):
        assert library.valid[by_slug[slug].segment].entity == "case"
        assert by_slug[slug].staff_digest is not None
    # Every local template renders (StrictUndefined: a typo in a template fails here).
    for c in campaigns:
        content = campaign_content(c)
        assert content.subject and content.html and content.text


def test_schedule_and_window_semantics(tmp_path):
    c = parse(tmp_path, GOOD)
    assert c.slug == "my-campaign"
    assert c.runs_on(date(2026, 11, 23)) and c.runs_on(date(2026, 11, 27))  # Mon, Fri
    assert not c.runs_on(date(2026, 11, 24))  # Tue
    # Default window 08:00-20:00, end exclusive.
    assert c.in_window(time(8, 0)) and not c.in_window(time(20, 0)) and not c.in_window(time(7, 59))


def test_unknown_key_names_file_and_path(tmp_path):
    text = GOOD + "send_window: {start: '09:00', end: '17:00', timezone: UTC}\n"
    with pytest.raises(CampaignError) as e:
        parse(tmp_path, text)
    assert (
        f"{tmp_path / 'my-campaign.yaml'}: send_window.timezone: Extra inputs are not permitted"
        in str(e.value)
    )


def test_bad_schedule_day_names_the_list_index(tmp_path):
    with pytest.raises(CampaignError) as e:
        parse(tmp_path, GOOD.replace("[mon, fri]", "[mon, friday]"))
    assert "my-campaign.yaml: schedule.days[1]:" in str(e.value)


def test_unknown_segment_suggests_close_names(tmp_path):
    with pytest.raises(CampaignError) as e:
        parse(tmp_path, GOOD.replace("lapsed-physio-6-12mo", "lapsed-physio-6-12m"))
    msg = str(e.value)
    assert "segment: unknown segment 'lapsed-physio-6-12m'" in msg
    assert "did you mean lapsed-physio-6-12mo" in msg


def test_staff_digest_needs_a_case_segment(tmp_path):
    text = GOOD + "staff_digest: {to: [desk@clinic.example]}\n"
    with pytest.raises(CampaignError, match="staff_digest: lists cases"):
        parse(tmp_path, text)


def test_batch_size_over_sendgrid_limit_and_missing_template(tmp_path):
    with pytest.raises(CampaignError) as e:
        parse(
            tmp_path, GOOD.replace("{local: reactivation}", "{local: nope}") + "batch_size: 1001\n"
        )
    msg = str(e.value)
    assert "template.local: Value error, local template 'nope' does not exist" in msg
    assert "known templates: birthday" in msg
    assert "batch_size: Input should be less than or equal to 1000" in msg


def test_too_many_categories(tmp_path):
    with pytest.raises(CampaignError, match="categories: List should have at most 7 items"):
        parse(tmp_path, GOOD + "categories: [a, b, c, d, e, f, g, h]\n")


def test_sendgrid_template_id_format(tmp_path):
    ok = parse(
        tmp_path,
        GOOD.replace("{local: reactivation}", "{sendgrid_template_id: d-" + "a" * 32 + "}"),
    )
    assert campaign_content(ok).template_id == "d-" + "a" * 32
    with pytest.raises(CampaignError, match="template"):
        parse(tmp_path, GOOD.replace("{local: reactivation}", "{sendgrid_template_id: abc}"))


def test_slug_key_and_bad_file_name_and_bad_yaml(tmp_path):
    with pytest.raises(CampaignError, match="slug: the slug is the file name"):
        parse(tmp_path, GOOD + "slug: x\n")
    with pytest.raises(CampaignError, match="file name must be a slug"):
        parse(tmp_path, GOOD, name="My Campaign.yaml")
    with pytest.raises(CampaignError, match="not valid YAML"):
        parse(tmp_path, "name: [unclosed")


def test_nobody_to_tell_and_empty_window(tmp_path):
    with pytest.raises(CampaignError, match="nobody to tell"):
        parse(tmp_path, GOOD + "notify_patient: false\n")
    with pytest.raises(CampaignError, match="send_window: Value error, start and end are equal"):
        parse(tmp_path, GOOD + "send_window: {start: '09:00', end: '09:00'}\n")


def test_folder_reports_every_bad_file_at_once(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD.replace("priority: 10", "priority: high"))
    (tmp_path / "b.yaml").write_text(GOOD.replace("lapsed-physio-6-12mo", "nope"))
    (tmp_path / "c.yaml").write_text(GOOD)
    loaded = load_campaigns(tmp_path, KNOWN)
    # The good file runs; each bad one is reported with its file, none stops the others.
    assert [c.slug for c in loaded.campaigns] == ["c"]
    msg = "\n".join(loaded.problems)
    assert "a.yaml: priority:" in msg and "b.yaml: segment: unknown segment 'nope'" in msg
    assert "c.yaml" not in msg


def test_a_typo_never_suggests_someone_elses_private_segment(tmp_path):
    # The shipped practitioner-own-physio-pipeline is private to its owner.
    with pytest.raises(CampaignError) as e:
        parse(tmp_path, GOOD.replace("lapsed-physio-6-12mo", "practitioner-own-physio-pipelin"))
    assert "did you mean" not in str(e.value)
    assert "practitioner-own-physio-pipeline" not in str(e.value)
