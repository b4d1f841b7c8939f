"""Unsubscribe categories: an opt-out of a category stops only that category's commercial
campaigns; transactional ones pass every marketing no, never an opt-out of the channel."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from outbound import ledger as L
from outbound.campaigns import Campaign, CampaignError, parse_campaign
from outbound.categories import parse_group_ids
from outbound.channels import SendGridEmail
from outbound.run import OutboundSettings, make_plan, send_planned
from outbound.selection import RunClock

AS_OF = date(2026, 11, 26)
CLOCK = RunClock.at(datetime(2026, 11, 26, 10, 0, tzinfo=UTC), "UTC")


def camp(slug: str, **kw) -> Campaign:
    return Campaign.model_validate({
        "name": slug, "segment": "seg", "template": {"local": "reactivation"}, "priority": 50,
        "schedule": {"every": "day"}, "slug": slug, **kw,
    })  # fmt: skip


REACTIVATION = camp("come-back", unsubscribe_category="reactivation")
BIRTHDAYS = camp("birthday", unsubscribe_category="birthdays")
ADMIN = camp("appointment-admin", purpose="transactional", unsubscribe_category="appointments")


@pytest.fixture
def settings(make_warehouse, tmp_path, state_url, engine):
    patients = [
        ("p1", "Ann", "ann@clinic.example", None, None, None),
        ("p2", "Bob", "bob@clinic.example", None, None, None),
        # Said no to email marketing in the practice-management system.
        ("p3", "Cy", "cy@clinic.example", None, False, None),
        ("p4", "Di", "di@clinic.example", None, None, None),
        # Another record with Ann's address.
        ("p5", "Ann", "ANN@clinic.example ", None, None, None),
    ]
    membership = [("seg", p[0], None, AS_OF) for p in patients]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership,
                        opt_outs=[("p4", "email", None)])  # fmt: skip
    now = datetime(2026, 11, 20, tzinfo=UTC)
    with engine.begin() as conn:
        L.record_category_opt_outs(conn, ["p1"], "reactivation", "preference page", now)
        L.record_category_opt_outs(conn, ["p2"], "all", "preference page", now)
    return OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC",
                            group_ids={"reactivation": 4242})  # fmt: skip


def decisions(settings, engine, campaign) -> dict[str, tuple[str, str]]:
    plan = make_plan(settings, [campaign], CLOCK, engine).plan
    return {p: (r, d) for p, r, d in plan.select("patient_id", "reason", "detail").rows()}


def test_a_category_opt_out_stops_only_its_category_and_never_transactional(settings, engine):
    # By hand: p1 left reactivation (and p5 is p1's address), p2 left all commercial
    # categories, p3 said no to marketing, p4 opted out of email altogether.
    assert decisions(settings, engine, REACTIVATION) == {
        "p1": ("opted_out", "opted out of reactivation"),
        "p2": ("opted_out", "opted out of reactivation"),
        "p3": ("opted_out", ""),
        "p4": ("opted_out", ""),
        "p5": ("opted_out", "opted out of reactivation"),
    }
    got = decisions(settings, engine, BIRTHDAYS)
    assert got["p1"] == ("", "") and got["p2"] == ("opted_out", "opted out of birthdays")
    assert got["p3"][0] == got["p4"][0] == "opted_out"
    # p5 shares p1's address: one person, one message (p1 the lower id).
    assert got["p5"] == ("same_address", "the address is messaged for another patient record")
    # Appointment administration: every marketing no passes; the email opt-out does not.
    got = decisions(settings, engine, ADMIN)
    assert {p: r for p, (r, _) in got.items()} == {
        "p1": "", "p2": "", "p3": "", "p4": "opted_out", "p5": "same_address"}  # fmt: skip


def test_the_suppression_group_and_the_category_ride_with_each_email(
    settings, engine, fake_sendgrid
):
    from outbound.unsubscribe import read_token

    linked = OutboundSettings(**{**settings.__dict__, "web_app_url": "https://app.example",
                                 "unsubscribe_secret": "s" * 40})  # fmt: skip
    ch = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)
    planned = make_plan(linked, [BIRTHDAYS, REACTIVATION], CLOCK, engine)
    send_planned(linked, [BIRTHDAYS, REACTIVATION], planned, CLOCK, engine, ch)
    (body,) = fake_sendgrid.requests  # only birthdays has anyone left to send to
    # Birthdays has no group configured; reactivation (4242) had nobody to send to.
    assert "asm" not in body
    header = body["personalizations"][0]["headers"]["List-Unsubscribe"]
    token = header.removeprefix("<https://app.example/unsubscribe/").removesuffix(">")
    assert read_token("s" * 40, token, AS_OF).category == "birthdays"

    # A campaign whose category has a group carries it as asm.group_id.
    with engine.begin() as conn:
        L.lift_category_opt_outs(conn, ["p1"], "reactivation", ["preference page"])
    fake_sendgrid.requests.clear()
    later = RunClock.at(datetime(2026, 11, 26, 11, 0, tzinfo=UTC), "UTC")
    other = camp("come-back-2", unsubscribe_category="reactivation",
                 frequency_cap={"max_messages": 5, "window_days": 1})  # fmt: skip
    send_planned(linked, [other], make_plan(linked, [other], later, engine), later, engine, ch)
    assert fake_sendgrid.requests[0]["asm"] == {"group_id": 4242}


def test_an_opt_out_of_the_category_between_plan_and_send_is_honoured(
    settings, engine, fake_sendgrid
):
    ch = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)
    planned = make_plan(settings, [BIRTHDAYS], CLOCK, engine)
    with engine.begin() as conn:
        L.record_category_opt_outs(conn, ["p1"], "birthdays", "one-click unsubscribe",
                                   datetime(2026, 11, 26, 10, 0, tzinfo=UTC))  # fmt: skip
    assert planned.plan.filter(planned.plan["decision"] == "send")["patient_id"].to_list() == [
        "p1"]
    report = send_planned(settings, [BIRTHDAYS], planned, CLOCK, engine, ch)
    # The run plans again under its lock, with consent as it is now: nobody is left.
    assert fake_sendgrid.requests == [] and report.sent == 0


def test_campaign_files_name_a_category_that_fits_their_purpose(tmp_path):
    import yaml

    base = ("name: n\nsegment: s\ntemplate: {local: reactivation}\npriority: 1\n"
            "schedule: {every: day}\n")  # fmt: skip

    def parse(extra: str) -> Campaign:
        return parse_campaign(tmp_path / "c.yaml", yaml.safe_load(base + extra), None)

    assert parse("").category == "general"
    with pytest.raises(CampaignError, match="names its category explicitly"):
        parse("purpose: transactional\n")
    with pytest.raises(CampaignError, match="'appointments' is for purpose: transactional"):
        parse("unsubscribe_category: appointments\n")
    with pytest.raises(CampaignError, match="unknown unsubscribe category 'promos'"):
        parse("unsubscribe_category: promos\n")
    assert parse("purpose: transactional\nunsubscribe_category: case-admin\n").category == (
        "case-admin")


def test_group_ids_setting():
    assert parse_group_ids("reactivation=12, billing=34") == {"reactivation": 12, "billing": 34}
    for bad in ("promos=1", "reactivation=²", "reactivation=0", "reactivation=" + "9" * 20,
                "reactivation"):
        with pytest.raises(ValueError, match="is not `category=group id`"):
            parse_group_ids(bad)
    with pytest.raises(ValueError, match="'appointments' is transactional"):
        parse_group_ids("appointments=3")
    with pytest.raises(ValueError, match="named twice"):
        parse_group_ids("reactivation=1,reactivation=2")
    with pytest.raises(ValueError, match="same suppression group"):
        parse_group_ids("reactivation=1,billing=1")


def test_a_category_opt_out_during_the_run_is_honoured_before_the_next_batch(
    make_warehouse, tmp_path, state_url, engine, fake_sendgrid
):
    patients = [(f"q{i}", "Q", f"q{i}@clinic.example", None, None, None) for i in (1, 2, 3)]
    db = make_warehouse(tmp_path / "w.duckdb", patients, [("seg", p[0], None, AS_OF)
                                                          for p in patients])  # fmt: skip
    s = OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")
    one_by_one = camp("birthday", unsubscribe_category="birthdays", batch_size=1)
    ch = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)

    def after_batch(slug: str, n: int) -> None:
        if n == 1:  # q2 leaves birthdays, q3 everything, while q1's message goes out
            at = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
            with engine.begin() as conn:
                L.record_category_opt_outs(conn, ["q2"], "birthdays", "one-click unsubscribe", at)
                L.record_category_opt_outs(conn, ["q3"], "all", "preference page", at)

    planned = make_plan(s, [one_by_one], CLOCK, engine)
    report = send_planned(s, [one_by_one], planned, CLOCK, engine, ch, after_batch=after_batch)
    assert fake_sendgrid.addresses == ["q1@clinic.example"]
    assert report.campaigns["birthday"].withheld == 2
