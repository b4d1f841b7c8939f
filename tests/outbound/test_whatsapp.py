"""WhatsApp through the real `twilio` client: approved templates, and a consent of its own
(an opt-in, and opt-outs that are not SMS's)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import duckdb
import pytest
import sqlalchemy as sa

from outbound import ledger as L
from outbound.campaigns import Campaign, CampaignError, parse_campaign
from outbound.channels import TwilioWhatsApp
from outbound.run import OutboundSettings, make_plan, send_planned
from outbound.selection import RunClock
from outbound.twilio_events import STOP_SOURCE, refuse_number

AS_OF = date(2026, 11, 26)
CLOCK = RunClock.at(datetime(2026, 11, 25, 23, 0, tzinfo=UTC), "Australia/Sydney")  # 10:00
SID = "AC" + "0" * 31 + "1"
CONTENT = "HX" + "ab" * 16


def camp(**kw) -> Campaign:
    return Campaign.model_validate({
        "name": "w", "segment": "seg", "channel": "whatsapp", "priority": 50,
        "template": {"whatsapp_content_sid": CONTENT, "variables": {"1": "first_name"}},
        "schedule": {"every": "day"}, "slug": "wa-recall", **kw,
    })  # fmt: skip


@pytest.fixture
def settings(make_warehouse, tmp_path, state_url, engine):
    patients = [
        ("w1", "Ann", None, "0412 000 001", None, None),  # on WhatsApp, said yes to it
        ("w2", "Bob", None, "0412 000 002", None, None),  # on WhatsApp, never said yes
        ("w3", "Cy", None, "0412 000 003", None, None),  # said yes, not on WhatsApp
        ("w4", "Di", None, "0412 000 004", None, False),  # yes to WhatsApp, replied STOP by SMS
        ("w5", "Ed", None, "0412 000 005", None, None),  # yes, then opted out of WhatsApp
    ]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, [("seg", p[0], None, AS_OF)
                                                           for p in patients],
                        opt_outs=[("w5", "whatsapp", None)])  # fmt: skip
    with duckdb.connect(str(db)) as con:
        con.execute("update raw.patients set has_whatsapp = patient_id != 'w3'")
    at = datetime(2026, 11, 1, tzinfo=UTC)
    with engine.begin() as conn:
        L.record_opt_ins(conn, ["w1", "w3", "w4", "w5"], "whatsapp", "reception form", at)
        refuse_number(conn, "+61412000004", ["w4"], STOP_SOURCE, at)  # an SMS STOP
    return OutboundSettings(duckdb_path=str(db), state_db_url=state_url,
                            timezone="Australia/Sydney", clinic_name="Harbour Physio")  # fmt: skip


def test_whatsapp_needs_its_own_yes_and_keeps_its_own_no(settings, engine):
    plan = make_plan(settings, [camp()], CLOCK, engine).plan
    assert dict(plan.select("patient_id", "reason").rows()) == {
        "w1": "",
        "w2": "no_consent",
        "w3": "no_address",
        # An SMS STOP and a no to SMS marketing are SMS's: WhatsApp has its own consent.
        "w4": "",
        "w5": "opted_out",
    }


def test_an_approved_template_goes_to_the_whatsapp_address(settings, engine, fake_twilio):
    ch = TwilioWhatsApp(account_sid=SID, auth_token="t", from_number="+61400000000",
                        base_url=fake_twilio.url)  # fmt: skip
    planned = make_plan(settings, [camp()], CLOCK, engine)
    report = send_planned(settings, [camp()], planned, CLOCK, engine, ch)
    assert report.sent == 2
    first = fake_twilio.requests[0]
    assert first["To"] == "whatsapp:+61412000001" and first["From"] == "whatsapp:+61400000000"
    assert first["ContentSid"] == CONTENT and "Body" not in first
    assert json.loads(first["ContentVariables"]) == {"1": "Ann"}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(L.ledger.c.recipient, L.ledger.c.channel,
                                      L.ledger.c.status)).all()  # fmt: skip
    assert sorted(map(tuple, rows)) == [("w1", "whatsapp", "sent"), ("w4", "whatsapp", "sent")]


def test_campaign_files_pair_whatsapp_with_its_templates(tmp_path):
    import yaml

    base = "name: n\nsegment: s\npriority: 1\nschedule: {every: day}\n"

    def parse(extra: str) -> Campaign:
        return parse_campaign(tmp_path / "c.yaml", yaml.safe_load(base + extra), None)

    with pytest.raises(CampaignError, match="needs an approved WhatsApp template"):
        parse("channel: whatsapp\ntemplate: {local: reactivation}\n")
    with pytest.raises(CampaignError, match="only a WhatsApp campaign can use one"):
        parse(f"template: {{whatsapp_content_sid: {CONTENT}}}\n")
    with pytest.raises(CampaignError, match="names 'surname', which is not a recipient field"):
        parse(f"channel: whatsapp\ntemplate: {{whatsapp_content_sid: {CONTENT}, "
              "variables: {'1': surname}}\n")  # fmt: skip
    with pytest.raises(CampaignError, match="whatsapp_content_sid: String should match"):
        parse("channel: whatsapp\ntemplate: {whatsapp_content_sid: HX123}\n")


def test_a_text_and_a_whatsapp_to_the_same_phone_are_one_message_a_run(settings, engine):
    sms_recall = Campaign.model_validate({
        "name": "s", "segment": "seg", "channel": "sms", "template": {"local": "reactivation"},
        "priority": 40, "schedule": {"every": "day"}, "slug": "sms-recall",
    })  # fmt: skip
    plan = make_plan(settings, [camp(), sms_recall], CLOCK, engine).plan
    got = {(c, p): r for c, p, r in plan.select("campaign", "patient_id", "reason").rows()}
    # w1 gets the WhatsApp (priority 50) and not also the text; w2 (no WhatsApp yes) gets
    # the text; w4 replied STOP by text, so WhatsApp only.
    assert got[("wa-recall", "w1")] == "" and got[("sms-recall", "w1")] == "lower_priority"
    assert got[("sms-recall", "w2")] == ""
    assert got[("wa-recall", "w4")] == "" and got[("sms-recall", "w4")] == "opted_out"


def test_a_whatsapp_test_send_and_an_empty_variable(settings, engine, fake_twilio):
    from outbound.channels import Recipient
    from outbound.run import test_send

    ch = TwilioWhatsApp(account_sid=SID, auth_token="t", from_number="+61400000000",
                        base_url=fake_twilio.url)  # fmt: skip
    assert test_send(settings, camp(), ch, "0412 999 999").ok
    assert fake_twilio.requests[-1]["To"] == "whatsapp:+61412999999"
    with pytest.raises(ValueError, match="is not a mobile number"):
        test_send(settings, camp(), ch, "someone@example.com")
    from outbound.templates import campaign_content

    content = campaign_content(camp())
    n = len(fake_twilio.requests)
    outcome = ch.send_batch([Recipient("l", "+61412000001", {"first_name": ""})], content, [], {})
    assert not outcome.ok and "variable(s) 1 are empty" in outcome.error
    assert len(fake_twilio.requests) == n  # no request made
