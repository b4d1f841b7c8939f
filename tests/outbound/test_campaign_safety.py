"""Campaign files that would have sent the wrong thing, or stopped every campaign: each is
refused with its file named, and the other campaigns still run."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from outbound.campaigns import (
    CampaignError,
    KnownSegments,
    SegmentFacts,
    load_campaigns,
    read_campaign,
)
from outbound.run import OutboundSettings, campaign_set, frequency_cap

KNOWN = KnownSegments(
    {
        "lapsed": SegmentFacts("patient"),
        "sams-list": SegmentFacts("patient", "private", "sam@clinic.example"),
    },
    invalid={"broken-seg": ["segs/broken-seg.yaml: include.conditions[0].field: unknown field"]},
)
GOOD = """\
name: Test
segment: lapsed
template: {local: reactivation}
priority: 10
schedule: {every: day}
"""


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def refusal(folder: Path, content: str | bytes, known=KNOWN) -> str:
    path = write(folder, "c.yaml", content)
    with pytest.raises(CampaignError) as err:
        read_campaign(path, known)
    message = str(err.value)
    assert str(path) in message
    assert "Traceback" not in message
    return message


def test_the_documented_one_off_schedule_is_read_as_written(tmp_path):
    path = write(tmp_path, "c.yaml", GOOD.replace("{every: day}", "{every: once, on: 2026-12-01}"))
    campaign = read_campaign(path, KNOWN)
    assert campaign.schedule.every == "once" and campaign.schedule.on.isoformat() == "2026-12-01"


def test_an_impossible_date_names_the_file_and_the_field(tmp_path):
    message = refusal(tmp_path, GOOD.replace("{every: day}", "{every: once, on: 2026-02-30}"))
    assert "schedule.on:" in message


def test_undecodable_bytes_name_the_file_and_line(tmp_path):
    message = refusal(tmp_path, GOOD.replace("name: Test", "name: Caf\xe9").encode("latin-1"))
    assert "line 1: byte 0xe9 is not UTF-8 text" in message


def test_a_key_given_twice_is_refused_not_silently_the_last(tmp_path):
    assert "line 6: duplicate key 'priority'" in refusal(tmp_path, GOOD + "priority: 99\n")


def test_a_campaign_over_an_invalid_segment_says_why(tmp_path):
    message = refusal(tmp_path, GOOD.replace("segment: lapsed", "segment: broken-seg"))
    assert "segment 'broken-seg' cannot be used until its definition is fixed" in message
    assert "unknown field" in message


def test_someone_elses_private_segment_cannot_be_targeted(tmp_path):
    over = GOOD.replace("segment: lapsed", "segment: sams-list")
    message = refusal(tmp_path, over)
    assert "segment 'sams-list' is private, and only a campaign of its owner may target it" in (
        message
    )
    assert "segment: segment 'sams-list' is private" in refusal(
        tmp_path, over + "owner: priya@clinic.example\n"
    )
    # Its owner's campaign may.
    path = write(tmp_path, "mine.yaml", over + "owner: Sam@Clinic.example\n")
    assert read_campaign(path, KNOWN).owner == "Sam@Clinic.example"


@pytest.mark.parametrize("name", ["../../../elsewhere/x", "/etc", "reactivation/../birthday"])
def test_a_template_is_a_name_never_a_path(tmp_path, name):
    message = refusal(tmp_path, GOOD.replace("{local: reactivation}", "{local: '" + name + "'}"))
    assert f"local template {name!r} is not a template name" in message


def test_a_zero_day_cap_window_is_refused(tmp_path, monkeypatch):
    message = refusal(tmp_path, GOOD + "frequency_cap: {max_messages: 1, window_days: 0}\n")
    assert "frequency_cap.window_days: Input should be greater than or equal to 1" in message
    settings = Settings.from_environ({"OUTBOUND_CAP_WINDOW_DAYS": "0"})
    with pytest.raises(ValueError, match="OUTBOUND_CAP_WINDOW_DAYS: Input should be greater"):
        frequency_cap(settings.cap_max_messages, settings.cap_window_days)


def test_a_template_that_does_not_render_leaves_only_its_campaign_out(tmp_path, monkeypatch):
    templates = tmp_path / "templates"
    broken = templates / "oops"
    broken.mkdir(parents=True)
    (broken / "subject.txt").write_text("Hello {{ r.first_name }}")
    (broken / "body.txt").write_text("Your {{ r.no_such_field }} is due")
    (broken / "body.html").write_text("<p>hi</p>")
    monkeypatch.setattr("outbound.campaigns.TEMPLATES_DIR", templates)
    monkeypatch.setattr("outbound.templates.TEMPLATES_DIR", templates)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shipped = GOOD.replace("segment: lapsed", "segment: lapsed-physio-6-12mo")
    write(campaigns, "bad.yaml", shipped.replace("{local: reactivation}", "{local: oops}"))
    write(campaigns, "good.yaml", shipped.replace("{local: reactivation}", "{local: oops2}"))
    other = templates / "oops2"
    other.mkdir()
    for part in ("subject.txt", "body.txt", "body.html"):
        (other / part).write_text("Hello {{ r.first_name }}")
    settings = OutboundSettings(str(tmp_path / "w.duckdb"), "", "UTC", campaigns_dir=campaigns)
    loaded = campaign_set(settings)
    # Found when the campaigns are read, before any plan or request: the other one runs.
    assert [c.slug for c in loaded.campaigns] == ["good"]
    [problem] = loaded.problems
    assert problem.startswith(f"{campaigns / 'bad.yaml'}: template: ")
    assert "oops/body.txt" in problem and "'dict object' has no attribute 'no_such_field'" in (
        problem
    )


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    write(tmp_path, "a-good.yaml", GOOD)
    write(tmp_path, "b-bad.yaml", b"name: \xff\n")
    write(tmp_path, "c-private.yaml", GOOD.replace("segment: lapsed", "segment: sams-list"))
    loaded = load_campaigns(tmp_path, KNOWN)
    assert [c.slug for c in loaded.campaigns] == ["a-good"]
    assert len(loaded.problems) == 2


@pytest.mark.parametrize(
    ("window", "words"),
    [
        ("quiet_hours: {start: '12:00Z', end: '13:00Z'}", "quiet_hours.start"),
        ("send_window: {start: '08:00+10:00', end: '17:00'}", "send_window.start"),
    ],
)
def test_a_time_with_a_zone_is_refused_not_a_crash_later(tmp_path, window, words):
    message = refusal(tmp_path, GOOD + window + "\n")
    assert words in message and "has a time zone; send windows and quiet hours are times" in (
        message
    )


def test_a_number_is_not_a_day(tmp_path):
    message = refusal(tmp_path, GOOD.replace("{every: day}", "{every: once, on: 1764547200}"))
    assert "schedule.on: Value error, 1764547200 is not a day; write it as YYYY-MM-DD" in message
