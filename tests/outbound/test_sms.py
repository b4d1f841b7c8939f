"""SMS through the real `twilio` client against a local stand-in on 127.0.0.1."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, time

import pytest
import sqlalchemy as sa

from outbound import ledger as L
from outbound.campaigns import Campaign, TimeRange
from outbound.channels import TwilioSms
from outbound.run import OutboundSettings, make_plan, send_planned
from outbound.selection import ChannelRules, RunClock, channel_rules

AS_OF = date(2026, 11, 26)
# 10:00 in Sydney (the clinic), 23:00 UTC the day before.
CLOCK = RunClock.at(datetime(2026, 11, 25, 23, 0, tzinfo=UTC), "Australia/Sydney")
SID = "AC" + "0" * 31 + "1"
SERVICE = "MG" + "0" * 31 + "2"


def camp(slug: str, priority: int = 50, **kw) -> Campaign:
    return Campaign.model_validate({
        "name": slug, "segment": "seg", "channel": "sms", "template": {"local": "reactivation"},
        "priority": priority, "schedule": {"every": "day"}, "slug": slug,
        "send_window": {"start": "08:00", "end": "20:00"}, **kw,
    })  # fmt: skip


def setup(make_warehouse, tmp_path, state_url, patients, **kw) -> OutboundSettings:
    membership = [("seg", p[0], None, AS_OF) for p in patients]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership, **kw)
    return OutboundSettings(duckdb_path=str(db), state_db_url=state_url,
                            timezone="Australia/Sydney", clinic_name="Harbour Physio",
                            rules=ChannelRules("AU"))  # fmt: skip


def sms(fake, sleeps=None, **kw) -> TwilioSms:
    return TwilioSms(account_sid=SID, auth_token="test-auth-token", messaging_service_sid=SERVICE,
                     base_url=fake.url, sleep=(sleeps.append if sleeps is not None else
                                               lambda s: None), **kw)  # fmt: skip


def run(settings, campaigns, engine, channel, clock=CLOCK):
    planned = make_plan(settings, campaigns, clock, engine)
    return planned, send_planned(settings, campaigns, planned, clock, engine, channel)


def rows(engine) -> dict[str, tuple]:
    with engine.connect() as conn:
        q = sa.select(L.ledger.c.recipient, L.ledger.c.status, L.ledger.c.provider_message_id,
                      L.ledger.c.channel, L.ledger.c.error)  # fmt: skip
        return {r.recipient: tuple(r)[1:] for r in conn.execute(q)}


PATIENTS = [
    ("p1", "Ann", None, "0412 345 678", None, None),
    ("p2", "Bob", None, "+61 413 000 111", None, None),
    ("p3", "Cy", None, "0061414000222", None, True),
]


def test_one_request_per_message_through_the_real_client(
    tmp_path, engine, state_url, fake_twilio, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS)
    ch = sms(fake_twilio, status_callback="https://app.example/webhooks/twilio/status")
    _, report = run(settings, [camp("recall")], engine, ch)

    assert report.sent == 3 and report.requests == 3
    # National, spaced and 00-prefixed numbers all reach Twilio in E.164.
    assert [r["To"] for r in fake_twilio.requests] == ["+61412345678", "+61413000111",
                                                        "+61414000222"]  # fmt: skip
    first = fake_twilio.requests[0]
    assert first["MessagingServiceSid"] == SERVICE and "From" not in first
    assert first["StatusCallback"] == "https://app.example/webhooks/twilio/status"
    # The clinic is named and the patient told how to stop: the template does neither.
    assert first["Body"] == (
        "Harbour Physio: Hi Ann, it's been a few months since your last physio session. "
        "Reply or book online and we will find a time. Reply STOP to opt out."
    )
    auth = base64.b64encode(f"{SID}:test-auth-token".encode()).decode()
    assert fake_twilio.headers[0]["Authorization"] == f"Basic {auth}"
    # Each message has its own ledger row, marked sent with its own Message SID.
    got = rows(engine)
    assert {r[0] for r in got.values()} == {"sent"}
    assert sorted(r[1] for r in got.values()) == sorted(s for _, _, s in fake_twilio.delivered)
    assert {r[2] for r in got.values()} == {"sms"}

    # The same day again: nothing is sent twice.
    fake_twilio.requests.clear()
    _, again = run(settings, [camp("recall")], engine, ch)
    assert fake_twilio.requests == [] and again.sent == 0


def test_the_sender_number_when_there_is_no_messaging_service(
    tmp_path, engine, state_url, fake_twilio, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS[:1])
    ch = TwilioSms(account_sid=SID, auth_token="t", from_number="+61400000000",
                   base_url=fake_twilio.url)  # fmt: skip
    run(settings, [camp("recall")], engine, ch)
    assert fake_twilio.requests[0]["From"] == "+61400000000"
    assert "MessagingServiceSid" not in fake_twilio.requests[0]


def test_429_20429_and_503_are_retried_with_backoff(
    tmp_path, engine, state_url, fake_twilio, reply, twilio_error, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS[:1])
    answers = {
        0: reply(429, body=twilio_error(429, 20429, "Too Many Requests")),
        1: reply(400, body=twilio_error(429, 20429, "Too Many Requests")),
        2: reply(503, body=twilio_error(503, 20503, "Service unavailable")),
    }
    fake_twilio.script = lambda n, form: answers.get(n)
    sleeps: list[float] = []
    _, report = run(settings, [camp("recall")], engine, sms(fake_twilio, sleeps))
    # Backoff 1 s, 2 s, 4 s (base 1 s, doubling), then the fourth attempt is taken.
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(fake_twilio.requests) == 4 and report.sent == 1
    assert rows(engine)["p1"][0] == "sent"


def test_rate_limited_to_the_end_is_failed_and_retryable(
    tmp_path, engine, state_url, fake_twilio, reply, twilio_error, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS[:1])
    fake_twilio.script = lambda n, form: reply(429, body=twilio_error(429, 20429, "slow down"))
    _, report = run(settings, [camp("recall")], engine, sms(fake_twilio, max_attempts=3))
    assert len(fake_twilio.requests) == 3 and report.failed == 1
    status, _, _, error = rows(engine)["p1"]
    assert status == "failed" and "gave up after 3 attempts" in error and "20429" in error
    with engine.connect() as conn:
        assert conn.execute(sa.select(L.ledger.c.retryable)).scalar_one() is True
    # Nothing was taken, so a later run of the day tries again, and this time it goes.
    fake_twilio.script = lambda n, form: None
    _, later = run(settings, [camp("recall")], engine, sms(fake_twilio))
    assert later.sent == 1 and later.campaigns["recall"].retried == 1


def test_a_500_may_have_queued_the_message_so_it_is_never_resent(
    tmp_path, engine, state_url, fake_twilio, reply, twilio_error, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS[:2])
    fake_twilio.script = lambda n, form: (
        reply(500, body=twilio_error(500, 20500, "Internal"), accepted=True) if n == 0 else None
    )
    _, report = run(settings, [camp("recall")], engine, sms(fake_twilio))
    assert report.stopped and "HTTP 500" in report.stopped
    assert rows(engine)["p1"][0] == "pending" and "p2" not in rows(engine)
    # The next run reports it unknown and sends only the one never tried.
    _, later = run(settings, [camp("recall")], engine, sms(fake_twilio))
    assert later.unknown == 1
    assert fake_twilio.numbers == ["+61412345678", "+61413000111"]
    assert rows(engine)["p1"][0] == "unknown"


def test_error_21610_is_learned_as_an_opt_out(
    tmp_path, engine, state_url, fake_twilio, reply, twilio_error, make_warehouse
):
    # p4 is another record with p1's number (a parent and child, say).
    patients = [*PATIENTS[:2], ("p4", "Dee", None, "+61412345678", None, None)]
    settings = setup(make_warehouse, tmp_path, state_url, patients)
    fake_twilio.script = lambda n, form: (
        reply(400, body=twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"))
        if form["To"] == "+61412345678" else None
    )
    _, report = run(settings, [camp("recall")], engine, sms(fake_twilio))
    status, _, _, error = rows(engine)["p1"]
    assert status == "failed" and "21610" in error
    assert ("p1", "sms") in L.read_learned_opt_outs(engine).rows()
    # The next plan: the number is opted out, for p1 and for the other record with it.
    planned = make_plan(settings, [camp("other")], CLOCK, engine)
    reasons = dict(planned.plan.select("patient_id", "reason").rows())
    assert reasons["p1"] == "opted_out" and reasons["p4"] == "opted_out"
    # p2 is not opted out: it was messaged a moment ago, which the cap counts.
    assert reasons["p2"] == "frequency_cap"


def test_no_connection_is_failed_and_retryable_with_nothing_sent(
    tmp_path, engine, state_url, make_warehouse
):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS[:1])
    ch = TwilioSms(account_sid=SID, auth_token="t", messaging_service_sid=SERVICE,
                   base_url=f"http://127.0.0.1:{port}", sleep=lambda s: None,
                   max_attempts=2)  # fmt: skip
    _, report = run(settings, [camp("recall")], engine, ch)
    status, _, _, error = rows(engine)["p1"]
    assert status == "failed" and "could not reach Twilio after 2 attempts" in error
    assert report.failed == 1 and report.stopped is None


def test_no_answer_in_time_is_unknown_not_resent(
    tmp_path, engine, state_url, fake_twilio, reply, twilio_error, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS[:1])
    fake_twilio.script = lambda n, form: reply(201, delay=1.5) if n == 0 else None
    _, report = run(settings, [camp("recall")], engine, sms(fake_twilio, timeout=0.5))
    assert report.stopped and "connection lost after the request was sent" in report.stopped
    _, later = run(settings, [camp("recall")], engine, sms(fake_twilio))
    assert later.unknown == 1 and len(fake_twilio.requests) == 1


def test_a_crash_between_the_request_and_the_ledger_update_is_unknown(
    tmp_path, engine, state_url, fake_twilio, make_warehouse, monkeypatch
):
    settings = setup(make_warehouse, tmp_path, state_url, PATIENTS[:2])
    real = L.set_status

    def crash(*args, **kw):
        raise SystemExit("the machine went down")

    # The request is made and Twilio takes it; the process dies before writing "sent".
    monkeypatch.setattr(L, "set_status", crash)
    with pytest.raises(SystemExit):
        run(settings, [camp("recall")], engine, sms(fake_twilio))
    monkeypatch.setattr(L, "set_status", real)
    assert rows(engine)["p1"][0] == "pending" and len(fake_twilio.delivered) == 1
    # Next run (after the dead run's lock goes stale): p1 is unknown, never resent.
    with engine.begin() as conn:
        conn.execute(L.send_lock.delete())
    _, later = run(settings, [camp("recall")], engine, sms(fake_twilio))
    assert later.unknown == 1
    assert fake_twilio.numbers == ["+61412345678", "+61413000111"]


def test_an_sms_campaign_without_a_sender_sends_nothing_and_says_why(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    from outbound.channels import SendGridEmail

    patients = [("p1", "Ann", "ann@clinic.example", "0412345678", None, None)]
    settings = setup(make_warehouse, tmp_path, state_url, patients)
    email = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)
    c = camp("recall")
    _, report = run(settings, [c], engine, {"email": email})
    assert report.sent == 0 and rows(engine) == {}
    assert "no sms sender is configured" in report.campaigns["recall"].not_sent


def test_one_message_per_person_across_channels_and_the_cap_counts_both(
    tmp_path, engine, state_url, fake_twilio, fake_sendgrid, make_warehouse
):
    from outbound.channels import SendGridEmail

    patients = [("p1", "Ann", "ann@clinic.example", "0412345678", None, None)]
    settings = setup(make_warehouse, tmp_path, state_url, patients)
    email = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)
    by_sms = camp("sms-recall", priority=60)
    by_email = Campaign.model_validate({
        "name": "e", "segment": "seg", "template": {"local": "reactivation"}, "priority": 40,
        "schedule": {"every": "day"}, "slug": "email-recall",
    })  # fmt: skip
    planned, report = run(settings, [by_sms, by_email], engine, {"email": email, "sms": sms(
        fake_twilio)})  # fmt: skip
    reasons = dict(planned.plan.select("campaign", "reason").rows())
    assert reasons == {"sms-recall": "", "email-recall": "lower_priority"}
    assert len(fake_twilio.delivered) == 1 and fake_sendgrid.requests == []
    # A later run with only the email campaign: the SMS counts toward its cap (1 per 7 days).
    later = make_plan(settings, [by_email], CLOCK, engine)
    assert later.plan.filter(later.plan["campaign"] == "email-recall")["reason"].to_list() == [
        "frequency_cap"
    ]


def test_commercial_sms_keeps_the_recipient_hours_in_their_own_time_zone(
    tmp_path, engine, state_url, make_warehouse
):
    import duckdb

    # A US clinic in New York at 09:30: open there, 06:30 in Los Angeles.
    clock = RunClock.at(datetime(2026, 11, 26, 14, 30, tzinfo=UTC), "America/New_York")
    patients = [
        ("ny", "Ann", None, "(212) 555-0100", None, None),
        ("la", "Bob", None, "213-555-0101", None, None),
        ("tx", "Cy", None, "+1 214 555 0102", None, None),
        ("ca", "Di", None, "+1 213 555 0103", None, None),
        ("blank", "Ed", None, "+1 213 555 0104", None, None),
        ("il", "Fay", None, "+1 312 555 0105", None, None),
    ]
    settings = setup(make_warehouse, tmp_path, state_url, patients)
    with duckdb.connect(settings.duckdb_path) as con:
        con.execute("update raw.patients set country = case when patient_id = 'blank' then "
                    "null when patient_id = 'ca' then 'U.S.A.' else 'USA' end, state = case "
                    "patient_id when 'ny' then 'NY' when 'la' then 'CA' when 'ca' then "
                    "'California' when 'blank' then 'ca' when 'il' then 'Illinois' "
                    "else 'TX' end")  # fmt: skip
    settings = OutboundSettings(**{**settings.__dict__, "timezone": "America/New_York",
                                   "rules": channel_rules("US")})  # fmt: skip
    commercial = camp("promo", send_window={"start": "07:00", "end": "22:00"})
    transactional = camp("visit-admin", purpose="transactional", priority=10,
                         unsubscribe_category="appointments",
                         send_window={"start": "07:00", "end": "22:00"})  # fmt: skip
    planned = make_plan(settings, [commercial, transactional], clock, engine)
    got = {(c, p): (d, r, detail) for c, p, d, r, detail in planned.plan.select(
        "campaign", "patient_id", "decision", "reason", "detail").rows()}  # fmt: skip
    # By hand, at 14:30 UTC: 09:30 New York, 08:30 Chicago, 07:30 Denver, 06:30 LA.
    assert got[("promo", "ny")][:2] == ("send", "")
    assert got[("promo", "il")][:2] == ("send", "")
    decision, reason, detail = got[("promo", "la")]
    assert (decision, reason) == ("deferred", "quiet_hours")
    assert detail == "outside 08:00-21:00 (US hours; now 06:30 in America/Los_Angeles)"
    # Written "U.S.A." / "California", or with no country (the clinic's is the US): LA.
    assert got[("promo", "ca")][1] == got[("promo", "blank")][1] == "quiet_hours"
    # Texas spans Central and Mountain time: 07:30 in El Paso, so not yet.
    assert got[("promo", "tx")][2] == ("outside 08:00-21:00 (US hours; now 08:30 in "
                                        "America/Chicago, 07:30 in America/Denver)")  # fmt: skip
    # Priority is settled before the hours: the deferred promo still claims the patient
    # (one message a run), and the patient gets it once it is 08:00 there.
    assert got[("visit-admin", "la")][1] == "lower_priority"


def test_recipient_hours_settings():
    au = channel_rules("AU")
    assert au.recipient_hours == TimeRange(start=time(9), end=time(20))
    assert channel_rules("AU", "08:30-21:00").recipient_hours == TimeRange(
        start=time(8, 30), end=time(21))  # fmt: skip
    assert channel_rules("GB").recipient_hours is None
    with pytest.raises(ValueError, match="wider than US allows"):
        channel_rules("US", "07:00-21:00")
    with pytest.raises(ValueError, match="write it as HH:MM-HH:MM"):
        channel_rules("AU", "9am to 8pm")
    with pytest.raises(ValueError, match="not a country this knows"):
        channel_rules("XX")


def test_a_number_changed_between_runs_still_counts_what_it_was_sent(
    tmp_path, engine, state_url, fake_twilio, make_warehouse
):
    run_in = _run_in(make_warehouse, state_url, engine, fake_twilio)
    # 10:00: a parent (p1) and child (p2) share the parent's phone: one message, to p1.
    run_in(tmp_path / "a", [("p1", "Mum", None, "0412 345 678", None, None),
                            ("p2", "Kid", None, "0412 345 678", None, None)])  # fmt: skip
    # Later that day the parent's record has a new number; the child's still the old one.
    # The old number had its message today (the ledger says where it went): not again.
    run_in(tmp_path / "b", [("p1", "Mum", None, "0499 999 999", None, None),
                            ("p2", "Kid", None, "0412 345 678", None, None)])  # fmt: skip
    assert fake_twilio.numbers == ["+61412345678"]


def _run_in(make_warehouse, state_url, engine, fake_twilio):
    """A send run over a warehouse of these patients, built in its own folder."""

    def go(folder, patients):
        folder.mkdir()
        settings = setup(make_warehouse, folder, state_url, patients)
        return run(settings, [camp("recall")], engine, sms(fake_twilio))[1]

    return go


def test_a_long_run_stops_when_the_hours_close_and_leaves_the_rest(
    tmp_path, engine, state_url, fake_twilio, make_warehouse, monkeypatch
):
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    import outbound.selection as sel

    patients = [(f"p{i}", "Ann", None, f"0412 000 {i:03d}", None, None) for i in range(4)]
    settings = setup(make_warehouse, tmp_path, state_url, patients)
    settings = OutboundSettings(**{**settings.__dict__, "rules": channel_rules("AU")})
    # Each request takes 5 minutes of (simulated) real time; the run starts at 19:55 in
    # Sydney, and the AU hours (and the send window) end at 20:00.
    passed = {"s": 0.0}
    real = sel.monotonic_clock.monotonic
    monkeypatch.setattr(sel.monotonic_clock, "monotonic", lambda: real() + passed["s"])
    start = datetime(2026, 11, 26, 8, 55, tzinfo=UTC)
    at: list[str] = []

    def script(n, form):
        moment = start + timedelta(seconds=passed["s"])
        at.append(moment.astimezone(ZoneInfo("Australia/Sydney")).strftime("%H:%M"))
        passed["s"] += 300

    fake_twilio.script = script
    clock = RunClock.at(start, "Australia/Sydney")
    c = camp("recall")
    report = send_planned(settings, [c], make_plan(settings, [c], clock, engine), clock, engine,
                          sms(fake_twilio))  # fmt: skip
    assert at == ["19:55"]
    assert report.sent == 1 and report.campaigns["recall"].deferred == 3
    # The three left were never written to the ledger: a later run sends them.
    assert set(rows(engine)) == {"p0"}
