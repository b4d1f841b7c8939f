"""Sending is for now: the findings that messaged patients twice or after they opted out,
each reproduced against the real `sendgrid` client and a local stand-in."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, date, datetime, timedelta

import duckdb
import pytest
import sqlalchemy as sa

from core.settings import Settings
from outbound import ledger as L
from outbound.campaigns import Campaign
from outbound.channels import SendGridEmail
from outbound.run import OutboundSettings, SenderSettings, make_plan, send_planned
from outbound.selection import RunClock


def camp(slug: str, segment: str = "seg", priority: int = 50, **kw) -> Campaign:
    return Campaign.model_validate(
        {"name": slug, "segment": segment, "template": {"local": "reactivation"},
         "priority": priority, "schedule": {"every": "day"}, "slug": slug, **kw}
    )  # fmt: skip


def clinic(make_warehouse, tmp_path, state_url, n: int, days: list[date], **kw):
    patients = [(f"p{i}", f"First{i}", f"p{i}@clinic.example", None, None, None) for i in range(n)]
    membership = [("seg", f"p{i}", None, d) for d in days for i in range(n)]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership, **kw)
    return OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")


def channel(url: str, **kw) -> SendGridEmail:
    return SendGridEmail(api_key="k", from_email="clinic@clinic.example", host=url,
                         sleep=lambda s: None, **kw)  # fmt: skip


def send(settings, campaigns, engine, ch, clock):
    planned = make_plan(settings, campaigns, clock, engine)
    return send_planned(settings, campaigns, planned, clock, engine, ch)


def statuses(engine) -> dict[str, tuple[str, int, bool]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(L.ledger.c.recipient, L.ledger.c.status,
                                      L.ledger.c.attempts, L.ledger.c.retryable))  # fmt: skip
        return {r[0]: (r[1], r[2], r[3]) for r in rows}


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here: every connection is refused
    return f"http://127.0.0.1:{port}"


JULY_2 = datetime(2026, 7, 2, 10, 0, tzinfo=UTC)


def test_a_backfill_day_after_a_send_messages_nobody_again(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    days = [date(2026, 6, 30), date(2026, 7, 2)]
    settings = clinic(make_warehouse, tmp_path, state_url, 112, days)
    today = RunClock.at(JULY_2, "UTC")
    assert send(settings, [camp("c")], engine, channel(fake_sendgrid.url), today).sent == 112
    # A minute later someone sends "for" 30 June: that is not today, so it is a dry run.
    backfill = RunClock.at(JULY_2 + timedelta(minutes=1), "UTC", date(2026, 6, 30))
    report = send(settings, [camp("c")], engine, channel(fake_sendgrid.url), backfill)
    assert report.dry_run and report.sent == 0
    assert report.dry_run_reason.startswith("sending is for the clinic's today only (2026-07-02")
    assert len(fake_sendgrid.addresses) == 112


def test_the_cap_counts_real_time_whatever_the_time_zone_calls_the_day(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    # Sent at 10:00 UTC on 2 July. Moments later the clinic's zone is changed to one where
    # it is already 3 July: a new as-of day, but the same 7 days of real time.
    days = [date(2026, 7, 2), date(2026, 7, 3), date(2026, 7, 9)]
    settings = clinic(make_warehouse, tmp_path, state_url, 5, days)
    send(settings, [camp("c")], engine, channel(fake_sendgrid.url), RunClock.at(JULY_2, "UTC"))
    kiritimati = OutboundSettings(settings.duckdb_path, state_url, "Pacific/Kiritimati")
    later = RunClock.at(JULY_2 + timedelta(minutes=5), "Pacific/Kiritimati")
    assert later.as_of == date(2026, 7, 3) and later.is_today
    report = send(kiritimati, [camp("c2")], engine, channel(fake_sendgrid.url), later)
    assert report.sent == 0 and len(fake_sendgrid.addresses) == 5
    # The window is 7 days of the clock, its first moment included: capped exactly 7 days
    # later, free a second after.
    week = RunClock.at(JULY_2 + timedelta(days=7), "UTC")
    assert send(settings, [camp("c3")], engine, channel(fake_sendgrid.url), week).sent == 0
    after = RunClock.at(JULY_2 + timedelta(days=7, seconds=1), "UTC")
    assert send(settings, [camp("c3")], engine, channel(fake_sendgrid.url), after).sent == 5


def test_an_opt_out_learned_after_the_plan_is_honoured_at_the_batch(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = clinic(make_warehouse, tmp_path, state_url, 3, [date(2026, 7, 2)])
    clock = RunClock.at(JULY_2, "UTC")
    planned = make_plan(settings, [camp("c")], clock, engine)
    assert planned.plan.filter(planned.plan["decision"] == "send").height == 3
    # p1 clicks unsubscribe between the plan and the send.
    L.record_opt_out(engine, "p1", "all", "unsubscribe link")
    report = send_planned(settings, [camp("c")], planned, clock, engine, channel(fake_sendgrid.url))
    assert sorted(fake_sendgrid.addresses) == ["p0@clinic.example", "p2@clinic.example"]
    assert report.sent == 2


def test_connection_refused_every_time_is_failed_and_retried_by_a_later_run(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = clinic(make_warehouse, tmp_path, state_url, 3, [date(2026, 7, 2)])
    clock = RunClock.at(JULY_2, "UTC")
    down = channel(closed_port_url(), max_attempts=3)
    report = send(settings, [camp("c")], engine, down, clock)
    assert report.failed == 3 and report.stopped is None
    # Provably never sent: failed and retryable, not unknown, and not counted by the cap.
    assert statuses(engine) == {f"p{i}": ("failed", 1, True) for i in range(3)}
    errors = set(L.ledger_errors(engine, clock.as_of).values())
    assert errors == {"could not reach SendGrid after 3 attempts (ConnectionRefusedError); "
                      "nothing was sent, a later run tries again"}  # fmt: skip
    # SendGrid is back an hour later: the same rows are tried again, once each.
    later = RunClock.at(JULY_2 + timedelta(hours=1), "UTC")
    again = send(settings, [camp("c")], engine, channel(fake_sendgrid.url), later)
    assert again.sent == 3 and again.campaigns["c"].retried == 3
    assert sorted(fake_sendgrid.addresses) == [f"p{i}@clinic.example" for i in range(3)]
    assert statuses(engine) == {f"p{i}": ("sent", 2, False) for i in range(3)}
    assert send(settings, [camp("c")], engine, channel(fake_sendgrid.url), later).sent == 0
    assert len(fake_sendgrid.addresses) == 3


def test_retries_of_a_provider_that_stays_away_are_bounded(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = clinic(make_warehouse, tmp_path, state_url, 1, [date(2026, 7, 2)])
    for hour in range(4):
        clock = RunClock.at(JULY_2 + timedelta(hours=hour), "UTC")
        send(settings, [camp("c")], engine, channel(closed_port_url(), max_attempts=1), clock)
    # Three requests in all (L.MAX_ATTEMPTS); the fourth run leaves the row alone.
    assert statuses(engine) == {"p0": ("failed", 3, True)}
    clock = RunClock.at(JULY_2 + timedelta(hours=5), "UTC")
    assert send(settings, [camp("c")], engine, channel(fake_sendgrid.url), clock).sent == 0
    assert fake_sendgrid.requests == []


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("localhost:9999", "SENDGRID_API_HOST='localhost:9999' is not a URL"),
        ("ftp://api.sendgrid.com", "is not a URL"),
        ("https://api.sendgrid.com/v3", "must be only scheme, host and port"),
        ("http://127.0.0.1:12ab", "has a port that is not a number"),
    ],
)
def test_a_host_without_a_scheme_is_refused_before_anything(monkeypatch, host, words):
    access = Settings.from_environ({"SENDGRID_API_HOST": host}).sender
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("'", "'")):
        SenderSettings.of(access)


def test_one_send_run_at_a_time(tmp_path, engine, state_url, fake_sendgrid, make_warehouse):
    settings = clinic(make_warehouse, tmp_path, state_url, 2, [date(2026, 7, 2)])
    clock = RunClock.at(JULY_2, "UTC")
    L.acquire_send_lock(engine, "someone-else", JULY_2)
    with pytest.raises(L.SendLockHeld, match=r"another send run \(pid \d+ on .*, started "
                       r"2026-07-02T10:00:00\+00:00\) is sending; nothing was sent"):
        send(settings, [camp("c")], engine, channel(fake_sendgrid.url), clock)
    assert fake_sendgrid.requests == [] and statuses(engine) == {}
    # A holder silent for longer than SEND_LOCK_STALE crashed: its lock is taken over.
    stale = RunClock.at(JULY_2 + L.SEND_LOCK_STALE + timedelta(seconds=1), "UTC")
    assert send(settings, [camp("c")], engine, channel(fake_sendgrid.url), stale).sent == 2
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(L.send_lock)).scalar() == 0


def test_two_send_runs_at_once_message_nobody_twice(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = clinic(make_warehouse, tmp_path, state_url, 40, [date(2026, 7, 2)])
    clock = RunClock.at(JULY_2, "UTC")
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def one(campaign: str) -> None:
        planned = make_plan(settings, [camp(campaign)], clock, engine)
        start.wait()
        try:
            outcomes.append(send_planned(settings, [camp(campaign)], planned, clock, engine,
                                         channel(fake_sendgrid.url, )))  # fmt: skip
        except L.SendLockHeld as exc:
            outcomes.append(exc)

    # Two different campaigns over the same patients, planned at the same moment.
    threads = [threading.Thread(target=one, args=(c,)) for c in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = fake_sendgrid.addresses
    assert len(addresses) == len(set(addresses)) == 40


def test_an_opt_out_row_ingest_rejected_still_opts_the_patient_out(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    from ingest.load import load_entity

    settings = clinic(make_warehouse, tmp_path, state_url, 6, [date(2026, 7, 2)])
    extract = tmp_path / "extract"
    extract.mkdir()
    # Dates and channels ingest cannot read: each row is rejected, but each is an opt-out.
    (extract / "opt_outs.csv").write_text(
        "patient_id,channel,opted_out_at,source\n"
        "p1,email,2026-13-01,Front desk\n"
        "p2,email,9999-12-31T00:00:00Z,Front desk\n"
        "p3,e-mail,2026-11-01T00:00:00Z,Unsubscribe link\n"
        "p4,sms,26/11/2026,Reply\n"  # an SMS opt-out says nothing about email
    )
    con = duckdb.connect(settings.duckdb_path)
    try:
        load_entity(con, "opt_outs", extract)
        assert con.execute("select count(*) from raw.opt_outs__rejected").fetchall() == [(4,)]
    finally:
        con.close()
    clock = RunClock.at(JULY_2, "UTC")
    planned = make_plan(settings, [camp("c")], clock, engine)
    got = dict(zip(planned.plan["patient_id"], planned.plan["reason"], strict=True))
    assert got == {"p0": "", "p1": "opted_out", "p2": "opted_out", "p3": "opted_out",
                   "p4": "", "p5": ""}  # fmt: skip
    send_planned(settings, [camp("c")], planned, clock, engine, channel(fake_sendgrid.url))
    assert sorted(fake_sendgrid.addresses) == [f"p{i}@clinic.example" for i in (0, 4, 5)]


def test_an_opt_out_line_nobody_can_read_stops_all_sending(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    from ingest.load import load_entity

    settings = clinic(make_warehouse, tmp_path, state_url, 3, [date(2026, 7, 2)])
    extract = tmp_path / "extract"
    extract.mkdir()
    (extract / "opt_outs.csv").write_text(
        "patient_id,channel,opted_out_at,source\np1,email,,Front desk\n"
        'p2,email,"2026-11-01,Front desk\n'  # a quote never closed: whose opt-out is it?
    )
    con = duckdb.connect(settings.duckdb_path)
    try:
        load_entity(con, "opt_outs", extract)
    finally:
        con.close()
    report = send(settings, [camp("c")], engine, channel(fake_sendgrid.url),
                  RunClock.at(JULY_2, "UTC"))  # fmt: skip
    assert report.dry_run and fake_sendgrid.requests == []
    assert report.dry_run_reason.startswith("1 opt-out row(s) of the extract could not be read")


def test_a_pinned_clock_time_never_sends_outside_the_window(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse, monkeypatch
):
    from outbound.run import run_clock

    settings = clinic(make_warehouse, tmp_path, state_url, 2, [date(2026, 7, 2)])
    day_only = camp("c", send_window={"start": "09:00", "end": "17:00"})
    # 03:00 at the clinic, with the plan's clock pinned to 10:00 (as the demo does).
    clock = run_clock(None, "UTC", now=datetime(2026, 7, 2, 3, 0, tzinfo=UTC), run_time="10:00")
    planned = make_plan(settings, [day_only], clock, engine)
    assert set(planned.plan["decision"]) == {"send"}  # the pinned dry-run view
    report = send_planned(settings, [day_only], planned, clock, engine, channel(fake_sendgrid.url))
    # The send itself goes by the real clock: 03:00 is outside 09:00-17:00.
    assert report.sent == 0 and fake_sendgrid.requests == []


def test_each_row_records_when_its_own_request_was_made(
    tmp_path, engine, state_url, fake_sendgrid, reply, make_warehouse
):
    settings = clinic(make_warehouse, tmp_path, state_url, 3, [date(2026, 7, 2)])
    fake_sendgrid.script = lambda n, b: reply(202, delay=0.4)
    send(settings, [camp("c", batch_size=1)], engine, channel(fake_sendgrid.url),
         RunClock.at(JULY_2, "UTC"))  # fmt: skip
    with engine.connect() as conn:
        stamps = sorted(conn.execute(sa.select(L.ledger.c.attempted_at)).scalars())
    # Three requests of 0.4 s each, one after the other: the last row's request was made
    # at least 0.8 s after the first's, not at the run's start.
    assert (stamps[2] - stamps[0]).total_seconds() >= 0.8


def test_opt_outs_are_compared_whatever_their_case_and_blanks(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = clinic(make_warehouse, tmp_path, state_url, 4, [date(2026, 7, 2)])
    # Learned from an unsubscribe tool that writes as it likes.
    L.record_opt_out(engine, "p0", "Email", "unsubscribe link")
    L.record_opt_out(engine, "p1", " ALL ", "reply STOP")
    L.record_opt_out(engine, "p2 ", "email", "front desk")
    with pytest.raises(ValueError, match="channel 'post' is not one of"):
        L.record_opt_out(engine, "p3", "post", "front desk")
    report = send(settings, [camp("c")], engine, channel(fake_sendgrid.url),
                  RunClock.at(JULY_2, "UTC"))  # fmt: skip
    assert fake_sendgrid.addresses == ["p3@clinic.example"] and report.sent == 1


def test_rows_an_older_version_stored_unnormalised_still_opt_out(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    settings = clinic(make_warehouse, tmp_path, state_url, 3, [date(2026, 7, 2)])
    with engine.begin() as conn:  # as written before opt-outs were normalised
        conn.execute(L.learned_opt_outs.insert(), [
            {"patient_id": "p0 ", "channel": "EMAIL", "recorded_at": JULY_2, "source": "old"},
            {"patient_id": "p1", "channel": "letter", "recorded_at": JULY_2, "source": "old"},
        ])  # fmt: skip
    send(settings, [camp("c")], engine, channel(fake_sendgrid.url), RunClock.at(JULY_2, "UTC"))
    # An unknown channel is read as `all`: the safe reading.
    assert fake_sendgrid.addresses == ["p2@clinic.example"]


def test_an_opt_out_the_next_export_leaves_out_is_kept(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    # 2 July: the extract says p1 opted out. 9 July: the export lost that row.
    days = [date(2026, 7, 2), date(2026, 7, 9)]
    settings = clinic(make_warehouse, tmp_path, state_url, 3, days,
                      opt_outs=[("p1", "email", "2026-06-01 00:00:00+00")])  # fmt: skip
    send(settings, [camp("c")], engine, channel(fake_sendgrid.url), RunClock.at(JULY_2, "UTC"))
    assert sorted(fake_sendgrid.addresses) == ["p0@clinic.example", "p2@clinic.example"]
    con = duckdb.connect(settings.duckdb_path)
    con.execute("delete from raw.opt_outs")
    con.close()
    later = RunClock.at(JULY_2 + timedelta(days=7, seconds=1), "UTC")
    report = send(settings, [camp("c")], engine, channel(fake_sendgrid.url), later)
    assert report.sent == 2 and "p1@clinic.example" not in fake_sendgrid.addresses
    kept = L.read_learned_opt_outs(engine)
    assert kept.rows() == [("p1", "email")]


def test_lift_opt_out_forgets_a_kept_one_only_once_the_extract_no_longer_lists_it(
    tmp_path, engine, state_url, make_warehouse, monkeypatch, capsys
):
    from clinic_audiences.campaign_commands import cmd_lift_opt_out

    settings = clinic(make_warehouse, tmp_path, state_url, 2, [date(2026, 7, 2)],
                      opt_outs=[("p1", "email", "2026-06-01 00:00:00+00")])  # fmt: skip
    monkeypatch.setenv("DUCKDB_PATH", settings.duckdb_path)
    monkeypatch.setenv("STATE_DB_URL", state_url)
    make_plan(settings, [camp("c")], RunClock.at(JULY_2, "UTC"), engine)  # keeps p1's
    assert cmd_lift_opt_out("p1", "email") == 2
    assert "the extract still lists this opt-out" in capsys.readouterr().err
    con = duckdb.connect(settings.duckdb_path)
    con.execute("delete from raw.opt_outs")
    con.close()
    assert cmd_lift_opt_out(" p1", "EMAIL") == 0
    assert "opt-out (email) forgotten" in capsys.readouterr().out
    assert L.read_learned_opt_outs(engine).is_empty()
    assert cmd_lift_opt_out("p1", "email") == 1  # nothing left to forget


def test_an_opt_out_on_a_duplicate_record_learned_after_the_plan_stops_the_other(
    tmp_path, engine, state_url, fake_sendgrid, make_warehouse
):
    # p0 and p1 are one person (one address); p1 is not a member of the segment.
    patients = [("p0", "Ann", "ann@clinic.example", None, None, None),
                ("p1", "Ann", "ANN@clinic.example", None, None, None),
                ("p2", "Bo", "bo@clinic.example", None, None, None)]  # fmt: skip
    membership = [("seg", p, None, date(2026, 7, 2)) for p in ("p0", "p2")]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership)
    settings = OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")
    clock = RunClock.at(JULY_2, "UTC")
    planned = make_plan(settings, [camp("c")], clock, engine)
    L.record_opt_out(engine, "p1", "email", "unsubscribe link")  # on the other record
    send_planned(settings, [camp("c")], planned, clock, engine, channel(fake_sendgrid.url))
    assert fake_sendgrid.addresses == ["bo@clinic.example"]
