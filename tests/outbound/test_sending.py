"""Sending through the real `sendgrid` client against a local stand-in on 127.0.0.1."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest
import sqlalchemy as sa

from outbound import ledger as L
from outbound.campaigns import Campaign
from outbound.channels import SendGridEmail
from outbound.run import OutboundSettings, make_plan, send_planned
from outbound.selection import RunClock

AS_OF = date(2026, 11, 26)
CLOCK = RunClock.at(datetime(2026, 11, 26, 10, 0, tzinfo=UTC), "UTC")
NOW_EPOCH = 1_800_000_000.0


def camp(slug: str, segment: str, priority: int, **kw) -> Campaign:
    return Campaign.model_validate(
        {
            "name": slug,
            "segment": segment,
            "template": {"local": "reactivation"},
            "priority": priority,
            "schedule": {"every": "day"},
            "slug": slug,
            **kw,
        }
    )


def setup(make_warehouse, tmp_path, state_url: str, n: int, **warehouse):
    patients = [
        (f"p{i:05d}", f"First{i}", f"p{i}@clinic.example", None, None, None) for i in range(n)
    ]
    membership = [("seg", f"p{i:05d}", None, AS_OF) for i in range(n)]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership, **warehouse)
    return OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")


def channel(fake, sleeps: list[float] | None = None, **kw) -> SendGridEmail:
    return SendGridEmail(
        api_key="test-key",
        from_email="clinic@clinic.example",
        host=fake.url,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        clock=lambda: NOW_EPOCH,
        **kw,
    )


def run(settings, campaigns, engine, ch, **kw):
    planned = make_plan(settings, campaigns, CLOCK, engine)
    return send_planned(settings, campaigns, planned, CLOCK, engine, ch, **kw)


def statuses(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {
            r.recipient: r.status
            for r in conn.execute(sa.select(L.ledger.c.recipient, L.ledger.c.status))
        }


def test_batches_of_1000_with_ledger_ids_categories_and_sandbox(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 2500)
    c = camp("reactivate", "seg", 50, categories=["reactivation"])
    report = run(settings, [c], engine, channel(fake_sendgrid, sandbox=True), sandbox=True)

    sizes = [len(r["personalizations"]) for r in fake_sendgrid.requests]
    assert sizes == [1000, 1000, 500]
    first = fake_sendgrid.requests[0]
    assert first["categories"] == ["clinic-audiences", "campaign:reactivate", "reactivation"]
    assert first["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert first["subject"] == "-first_name-, it's been a while"
    p0 = first["personalizations"][0]
    assert p0["to"] == [{"email": "p0@clinic.example"}]
    assert p0["substitutions"]["-first_name-"] == "First0"
    assert fake_sendgrid.headers[0]["Authorization"] == "Bearer test-key"
    # Every personalization carries its own ledger row's id; all 2500 distinct.
    with engine.connect() as conn:
        rows = {r.id: (r.recipient, r.status) for r in conn.execute(sa.select(L.ledger))}
    assert sorted(fake_sendgrid.ledger_ids) == sorted(rows)
    assert {s for _, s in rows.values()} == {"sandbox"}
    assert report.sent == 2500 and report.requests == 3


def test_batch_size_below_1000_is_honoured(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 5)
    run(settings, [camp("small", "seg", 50, batch_size=2)], engine, channel(fake_sendgrid))
    assert [len(r["personalizations"]) for r in fake_sendgrid.requests] == [2, 2, 1]


def test_429_and_503_are_retried_honouring_rate_limit_reset(
    tmp_path, engine, state_url, fake_sendgrid, reply, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 3)

    def script(n, body):
        if n == 0:
            # Rate limit resets 7 s from "now": wait 7 s rather than the 1 s backoff.
            return reply(429, {"X-RateLimit-Reset": str(int(NOW_EPOCH) + 7)}, '{"errors": []}')
        if n == 1:
            return reply(503, body='{"errors": [{"message": "unavailable"}]}')
        return None

    fake_sendgrid.script = script
    sleeps: list[float] = []
    report = run(settings, [camp("c", "seg", 50)], engine, channel(fake_sendgrid, sleeps))
    # attempt 1: max(1 s backoff, 7 s to reset) = 7; attempt 2: backoff 1 × 2¹ = 2 s.
    assert sleeps == [7.0, 2.0]
    assert len(fake_sendgrid.requests) == 3
    assert fake_sendgrid.requests[0] == fake_sendgrid.requests[2]  # the same batch again
    assert report.sent == 3 and set(statuses(engine).values()) == {"sent"}


@pytest.mark.parametrize("code", [500, 502, 504])
def test_a_5xx_that_may_have_been_acted_on_is_never_sent_again(
    tmp_path, engine, state_url, fake_sendgrid, reply, make_warehouse, code
):
    # 3 patients, batches of 2: the first batch's answer is a 500 (the provider had the
    # request and failed somewhere); it may have mailed them, so it is not repeated and
    # the run stops before the second batch.
    settings = setup(make_warehouse, tmp_path, state_url, 3)
    fake_sendgrid.script = lambda n, body: reply(code, body='{"errors": [{"message": "x"}]}')
    sleeps: list[float] = []
    report = run(settings, [camp("c", "seg", 50, batch_size=2)], engine,
                 channel(fake_sendgrid, sleeps))  # fmt: skip
    assert len(fake_sendgrid.requests) == 1 and sleeps == []
    assert report.sent == 0 and f"HTTP {code}" in report.stopped
    assert sorted(statuses(engine).values()) == ["pending", "pending"]
    # The next run marks them unknown and does not send them again; the third patient,
    # never tried, goes out.
    fake_sendgrid.script = lambda n, body: None
    again = run(settings, [camp("c", "seg", 50, batch_size=2)], engine,
                channel(fake_sendgrid, sleeps))  # fmt: skip
    assert again.unknown == 2 and again.sent == 1 and len(fake_sendgrid.requests) == 2
    assert sorted(statuses(engine).values()) == ["sent", "unknown", "unknown"]


def test_persistent_503_gives_up_and_marks_failed_retryable(
    tmp_path, engine, state_url, fake_sendgrid, reply, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 2)
    fake_sendgrid.script = lambda n, body: reply(503, body='{"errors": [{"message": "down"}]}')
    sleeps: list[float] = []
    report = run(
        settings, [camp("c", "seg", 50)], engine, channel(fake_sendgrid, sleeps, max_attempts=3)
    )
    assert len(fake_sendgrid.requests) == 3 and sleeps == [1.0, 2.0]
    assert report.failed == 2
    errors = L.ledger_errors(engine, AS_OF)
    assert set(errors.values()) == {"HTTP 503: gave up after 3 attempts: down"}


def test_a_400_fails_its_batch_and_the_other_batches_go_through(
    tmp_path, engine, state_url, fake_sendgrid, reply, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 2500)
    error = (
        '{"errors": [{"message": "Invalid type. Expected: object", "field": "personalizations.0"}]}'
    )
    fake_sendgrid.script = lambda n, body: reply(400, body=error) if n == 1 else None
    report = run(settings, [camp("c", "seg", 50)], engine, channel(fake_sendgrid))
    assert len(fake_sendgrid.requests) == 3
    failed_ids = {
        p["custom_args"]["ledger_id"] for p in fake_sendgrid.requests[1]["personalizations"]
    }
    errors = L.ledger_errors(engine, AS_OF)
    assert set(errors) == failed_ids and len(failed_ids) == 1000
    assert set(errors.values()) == {
        "HTTP 400: Invalid type. Expected: object (field personalizations.0)"
    }
    st = statuses(engine)
    assert sum(v == "sent" for v in st.values()) == 1500
    assert report.sent == 1500 and report.failed == 1000


def test_crash_mid_batch_then_rerun_sends_no_duplicates_and_reports_unknown(
    tmp_path, engine, state_url, fake_sendgrid, reply, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 2500)
    c = camp("c", "seg", 50)
    # The second request reaches the server, which then drops the connection: did
    # SendGrid accept it? Nobody knows, so the run stops with those rows pending.
    fake_sendgrid.script = lambda n, body: reply(drop=True) if n == 1 else None
    first = run(settings, [c], engine, channel(fake_sendgrid))
    assert first.stopped and "connection lost" in first.stopped
    assert first.sent == 1000
    st = statuses(engine)
    assert sum(v == "pending" for v in st.values()) == 1000 and len(st) == 2000

    fake_sendgrid.script = lambda n, body: None
    second = run(settings, [c], engine, channel(fake_sendgrid))
    assert second.unknown == 1000
    assert second.campaigns["c"].already_in_ledger == 2000
    assert second.sent == 500 and len(fake_sendgrid.requests) == 3
    # Nobody was sent twice, the 1000 in doubt were not resent, everybody else got one.
    addresses = fake_sendgrid.addresses
    assert len(addresses) == len(set(addresses)) == 2500
    st = statuses(engine)
    assert sum(v == "unknown" for v in st.values()) == 1000
    assert sum(v == "sent" for v in st.values()) == 1500


def test_rerunning_a_whole_day_makes_no_new_requests(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 1200)
    c = camp("c", "seg", 50, staff_digest={"to": ["desk@clinic.example"]})
    first = run(settings, [c], engine, channel(fake_sendgrid))
    # 1200 patients in 2 requests + 1 staff digest listing their 1200 rows.
    assert first.requests == 3 and first.sent == 1200
    before = len(fake_sendgrid.requests)
    second = run(settings, [c], engine, channel(fake_sendgrid))
    assert len(fake_sendgrid.requests) == before
    assert second.sent == 0 and second.campaigns["c"].already_in_ledger == 1200
    assert second.campaigns["c"].digest == "already sent today"


def test_staff_digest_lists_cases_and_does_not_cap_patients(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    patients = [("p1", "Ann", "ann@clinic.example", None, None, None)]
    membership = [("cases", "p1", "c1", AS_OF), ("cases", "p1", "c2", AS_OF)]
    cases = [
        ("c1", "p1", "EPC 2026", date(2026, 12, 10), 14, 2, 300),
        ("c2", "p1", "DVA", date(2026, 12, 20), 24, 1, 100),
    ]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership, case_features=cases)
    settings = OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")
    staff_only = camp(
        "staff-only",
        "cases",
        90,
        notify_patient=False,
        staff_digest={"to": ["a@clinic.example", "b@clinic.example"]},
    )
    patient = camp("reminder", "cases", 10, template={"local": "referral_expiring"})
    run(settings, [staff_only, patient], engine, channel(fake_sendgrid))
    digest, message = fake_sendgrid.requests
    assert [p["to"][0]["email"] for p in digest["personalizations"]] == [
        "a@clinic.example",
        "b@clinic.example",
    ]
    assert "staff-digest" in digest["categories"]
    text = digest["content"][0]["value"]
    assert "- case c1 (patient p1): EPC 2026; expires 2026-12-10; sessions left 2" in text
    assert "- case c2 (patient p1): DVA; expires 2026-12-20; sessions left 1" in text
    # The staff digest did not claim or cap the patient: the patient message went out,
    # about the first of the patient's cases.
    assert message["personalizations"][0]["substitutions"]["-case_name-"] == "EPC 2026"
    assert message["subject"] == "Your referral expires on -expiry_date-"
    assert statuses(engine) == {"staff": "sent", "p1": "sent"}


def test_learned_opt_out_in_the_state_store_suppresses(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = setup(make_warehouse, tmp_path, state_url, 3)
    L.record_opt_out(engine, "p00001", "email", "unsubscribe link")
    L.record_opt_out(engine, "p00001", "email", "again")  # idempotent
    planned = make_plan(settings, [camp("c", "seg", 50)], CLOCK, engine)
    got = dict(zip(planned.plan["patient_id"], planned.plan["reason"], strict=True))
    assert got == {"p00000": "", "p00001": "opted_out", "p00002": ""}


def test_every_extract_opt_out_counts_whatever_its_date(
    tmp_path, engine, state_url, make_warehouse
):
    # Consent is the latest known at the moment of sending: an opt-out dated after the
    # day the plan is for (even after today) is an opt-out all the same.
    settings = setup(
        make_warehouse,
        tmp_path,
        state_url,
        4,
        opt_outs=[
            ("p00000", "email", datetime(2026, 11, 25, 23, 0, tzinfo=UTC)),
            ("p00001", "all", datetime(2026, 11, 27, 1, 0, tzinfo=UTC)),
            ("p00002", "email", None),
            ("p00003", "sms", datetime(2026, 11, 1, tzinfo=UTC)),  # another channel
        ],
    )
    planned = make_plan(settings, [camp("c", "seg", 50)], CLOCK, engine)
    got = dict(zip(planned.plan["patient_id"], planned.plan["reason"], strict=True))
    assert got == {
        "p00000": "opted_out",
        "p00001": "opted_out",
        "p00002": "opted_out",
        "p00003": "",
    }


def test_dry_run_channel_none_writes_nothing(tmp_path, engine, state_url, make_warehouse):
    settings = setup(make_warehouse, tmp_path, state_url, 3)
    report = run(settings, [camp("c", "seg", 50)], engine, None)
    assert report.dry_run and report.campaigns["c"].planned == 3
    assert statuses(engine) == {}


def test_request_body_refuses_more_than_1000(tmp_path, fake_sendgrid):
    from outbound.channels import Content, Recipient

    ch = channel(fake_sendgrid)
    recipients = [Recipient(str(i), f"{i}@clinic.example") for i in range(1001)]
    with pytest.raises(ValueError, match="1..1000 personalizations, got 1001"):
        ch.request_body(recipients, Content(subject="s", html="h", text="t"), [], {})


def test_ledger_frame_round_trip(engine):
    ids = L.insert_pending(
        engine, [L.LedgerEntry("c", "p1", "p1", None, "seg", "email")], AS_OF, "run-1"
    )
    L.set_status(engine, ids, L.SENT)
    frame = L.read_ledger(engine)
    assert frame.select("campaign", "recipient", "send_date", "status").rows() == [
        ("c", "p1", AS_OF, "sent")
    ]
    assert frame.schema["created_at"] == pl.Datetime("us", "UTC")
