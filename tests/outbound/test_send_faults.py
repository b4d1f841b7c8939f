"""Faults from the outside world, against the real `sendgrid` client and a local stand-in.

For each fault the stand-in records what it took for delivery. After the faulty run and a
clean re-run, every scenario must show: no patient delivered twice, no opted-out patient
delivered, and rows left `unknown` only where the outcome really was ambiguous (the
request was sent and no clear answer came back). Each scenario prints its figures.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from outbound import ledger as L
from outbound.campaigns import Campaign
from outbound.channels import SendGridEmail
from outbound.run import OutboundSettings, make_plan, send_planned
from outbound.selection import RunClock

NOW = datetime(2026, 7, 2, 10, 0, tzinfo=UTC)
DAY = NOW.date()
PATIENTS = 25  # p0 .. p24; p3 has opted out of everything
BATCH = 10  # three requests: 10, 10, 4 (p3 is suppressed)


def campaign() -> Campaign:
    return Campaign.model_validate(
        {"name": "c", "segment": "seg", "template": {"local": "reactivation"}, "priority": 50,
         "schedule": {"every": "day"}, "slug": "c", "batch_size": BATCH}
    )  # fmt: skip


def patients(n: int) -> list[tuple]:
    return [(f"p{i}", f"First{i}", f"p{i}@clinic.example", None, None, None) for i in range(n)]


@pytest.fixture
def clinic(tmp_path, state_url, make_warehouse):
    members = [("seg", f"p{i}", None, DAY) for i in range(PATIENTS)]
    db = make_warehouse(
        tmp_path / "wh.duckdb", patients(PATIENTS), members, opt_outs=[("p3", "all", None)]
    )
    return OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")


def channel(url: str, timeout: float = 30.0) -> SendGridEmail:
    return SendGridEmail(api_key="k", from_email="clinic@clinic.example", host=url,
                         sleep=lambda s: None, max_attempts=3, timeout=timeout,
                         clock=lambda: NOW.timestamp())  # fmt: skip


def run(settings, engine, ch, at: datetime):
    clock = RunClock.at(at, "UTC")
    planned = make_plan(settings, [campaign()], clock, engine)
    return send_planned(settings, [campaign()], planned, clock, engine, ch)


def outcome(engine, fake) -> dict[str, int]:
    with engine.connect() as conn:
        status = Counter(conn.execute(sa.select(L.ledger.c.status)).scalars())
    delivered = Counter(fake.delivered_addresses)
    return {
        "duplicates_delivered": sum(n - 1 for n in delivered.values() if n > 1),
        "opted_out_delivered": delivered["p3@clinic.example"],
        "unknown": status["unknown"] + status["pending"],
        "delivered": len(delivered),
    }


def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


# scenario → (script for the stand-in's n-th request, client timeout, rows the outcome of
# which is really unknown)
SCENARIOS = {
    "429 then accepted": (lambda r: lambda n, b: r(429, {"X-RateLimit-Reset": "0"}, "{}")
                          if n == 0 else None, 30.0, 0),
    "5xx then accepted": (lambda r: lambda n, b: r(503, body="{}") if n in (0, 1) else None,
                          30.0, 0),
    "429 every time (rate-limited all run)": (lambda r: lambda n, b: r(429, body="{}"),
                                              30.0, 0),
    "reset after the request is read (batch 2)": (
        lambda r: lambda n, b: r(drop=True) if n == 1 else None, 30.0, BATCH),
    "no answer in time (batch 1)": (
        lambda r: lambda n, b: r(delay=1.5) if n == 0 else None, 0.5, BATCH),
    "2xx cut short (batch 3)": (
        lambda r: lambda n, b: r(202, body="{}", truncate=True) if n == 2 else None, 30.0, 4),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault_then_clean_rerun(name, clinic, engine, fake_sendgrid, reply, capsys):
    script, timeout, ambiguous = SCENARIOS[name]
    fake_sendgrid.script = script(reply)
    run(clinic, engine, channel(fake_sendgrid.url, timeout), NOW)
    # Later the same day the provider behaves: the re-run sends what is due, only that.
    fake_sendgrid.script = lambda n, b: None
    run(clinic, engine, channel(fake_sendgrid.url), NOW + timedelta(hours=1))
    got = outcome(engine, fake_sendgrid)
    with capsys.disabled():
        print(f"\n  fault: {name}: {got}")
    assert got["duplicates_delivered"] == 0
    assert got["opted_out_delivered"] == 0
    assert got["unknown"] == ambiguous
    # Everyone not in doubt got their one message: the 24 who may be emailed.
    assert got["delivered"] == 24


def test_a_redirect_to_a_page_is_not_taken_for_sent(clinic, engine, fake_sendgrid, reply, capsys):
    # A captive portal or proxy answers the POST with a redirect; the client follows it to
    # a page that answers 200. That is not SendGrid's 202.
    fake_sendgrid.script = lambda n, b: reply(302, {"Location": "/login"}) if n == 0 else None
    run(clinic, engine, channel(fake_sendgrid.url), NOW)
    run(clinic, engine, channel(fake_sendgrid.url), NOW + timedelta(hours=1))
    got = outcome(engine, fake_sendgrid)
    with capsys.disabled():
        print(f"\n  fault: redirect to a sign-in page (batch 1): {got}")
    assert got == {"duplicates_delivered": 0, "opted_out_delivered": 0, "unknown": 0,
                   "delivered": 14}  # fmt: skip
    errors = set(L.ledger_errors(engine, DAY).values())
    assert errors == {"unexpected answer HTTP 200 (SendGrid answers 202): the request did not "
                      "reach SendGrid's mail/send; check SENDGRID_API_HOST and any proxy in "
                      "between"}  # fmt: skip


def test_refused_connections_then_a_clean_rerun(clinic, engine, fake_sendgrid, capsys):
    run(clinic, engine, channel(closed_port()), NOW)
    run(clinic, engine, channel(fake_sendgrid.url), NOW + timedelta(hours=1))
    got = outcome(engine, fake_sendgrid)
    with capsys.disabled():
        print(f"\n  fault: connection refused on every attempt: {got}")
    assert got == {"duplicates_delivered": 0, "opted_out_delivered": 0, "unknown": 0,
                   "delivered": 24}  # fmt: skip


def send_env(tmp_path, make_warehouse, fake_sendgrid, window: str) -> dict[str, str]:
    """A clinic, its campaign folder and the environment of `audiences campaigns send`."""
    today = datetime.now(ZoneInfo("UTC")).date()
    members = [("lapsed-physio-6-12mo", f"p{i}", None, today) for i in range(PATIENTS)]
    db = make_warehouse(tmp_path / "wh.duckdb", patients(PATIENTS), members,
                        opt_outs=[("p3", "all", None)])  # fmt: skip
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "c.yaml").write_text(
        "name: C\nsegment: lapsed-physio-6-12mo\ntemplate: {local: reactivation}\n"
        f"priority: 50\nschedule: {{every: day}}\nbatch_size: {BATCH}\n" + window
    )
    env = {
        **os.environ, "DUCKDB_PATH": str(db), "STATE_DB_URL": f"sqlite:///{tmp_path / 's.db'}",
        "CLINIC_TIMEZONE": "UTC", "CAMPAIGNS_PATH": str(campaigns),
        "SENDGRID_API_KEY": "k", "SENDGRID_API_HOST": fake_sendgrid.url,
        "OUTBOUND_FROM_EMAIL": "clinic@clinic.example",
    }  # fmt: skip
    for name in ("OUTBOUND_SEND_DISABLED", "OUTBOUND_RUN_TIME", "SEGMENTS_PATH"):
        env.pop(name, None)
    return env


def test_sigterm_while_waiting_to_retry_leaves_nothing_unknown(
    tmp_path, make_warehouse, fake_sendgrid, reply, capsys, window_around_now
):
    env = send_env(tmp_path, make_warehouse, fake_sendgrid, window_around_now("UTC"))
    audiences = str(Path(sys.executable).parent / "audiences")
    # Batch 2 is rate-limited for a minute: the run waits to try again, and is stopped.
    reset = str(int(time.time()) + 60)
    fake_sendgrid.script = lambda n, b: (reply(429, {"X-RateLimit-Reset": reset}, "{}")
                                         if n == 1 else None)  # fmt: skip
    proc = subprocess.Popen([audiences, "campaigns", "send"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and len(fake_sendgrid.requests) < 2:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the wait before the third request
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    fake_sendgrid.script = lambda n, b: None
    again = subprocess.run([audiences, "campaigns", "send"], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "now 'unknown'" not in again.stdout
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    got = outcome(engine, fake_sendgrid)
    engine.dispose()
    with capsys.disabled():
        print(f"\n  fault: SIGTERM while waiting to retry, then re-run: {got}")
    assert got == {"duplicates_delivered": 0, "opted_out_delivered": 0, "unknown": 0,
                   "delivered": 24}  # fmt: skip


def test_kill_9_mid_request_then_rerun(
    tmp_path, make_warehouse, fake_sendgrid, reply, capsys, window_around_now
):
    """`audiences campaigns send` killed while its second request is in flight, then run
    again: the batch in flight is unknown (it was delivered), nothing is sent twice."""
    env = send_env(tmp_path, make_warehouse, fake_sendgrid, window_around_now("UTC"))
    audiences = str(Path(sys.executable).parent / "audiences")
    # The second request is taken, then the stand-in holds its answer back.
    fake_sendgrid.script = lambda n, b: reply(delay=30) if n == 1 else None
    proc = subprocess.Popen([audiences, "campaigns", "send"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and len(fake_sendgrid.delivered) < 2 * BATCH:
        time.sleep(0.05)
    assert len(fake_sendgrid.delivered) == 2 * BATCH, proc.communicate(timeout=5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fake_sendgrid.script = lambda n, b: None
    again = subprocess.run([audiences, "campaigns", "send"], env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "10 message(s) left pending by an earlier run are now 'unknown'" in again.stdout
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
    got = outcome(engine, fake_sendgrid)
    engine.dispose()
    with capsys.disabled():
        print(f"\n  fault: kill -9 with a request in flight, then re-run: {got}")
    assert got == {"duplicates_delivered": 0, "opted_out_delivered": 0, "unknown": BATCH,
                   "delivered": 24}  # fmt: skip
