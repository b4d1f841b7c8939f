"""Fixtures for outbound tests: state stores, a tiny warehouse, a local SendGrid stand-in."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa

import outbound.ledger  # noqa: F401  (registers the outbound migrations)
from core.state_store import connect_state, migrate
from ingest.raw_tables import create_empty_raw_tables
from segments.members import ensure_membership_tables

OUTBOUND_ENV = (
    "SENDGRID_API_KEY",
    "SENDGRID_API_HOST",
    "SENDGRID_SANDBOX_MODE",
    "OUTBOUND_SEND_DISABLED",
    "OUTBOUND_FROM_EMAIL",
    "OUTBOUND_FROM_NAME",
    "OUTBOUND_CAP_MAX_MESSAGES",
    "OUTBOUND_CAP_WINDOW_DAYS",
    "OUTBOUND_RUN_TIME",
    "CAMPAIGNS_PATH",
    "SENDGRID_WEBHOOK_PUBLIC_KEY",
    "WEB_APP_URL",
    "UNSUBSCRIBE_SECRET",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_MESSAGING_SERVICE_SID",
    "TWILIO_FROM_NUMBER",
    "TWILIO_API_BASE_URL",
    "CLINIC_NAME",
    "CLINIC_COUNTRY",
    "OUTBOUND_RECIPIENT_HOURS",
)


@pytest.fixture(autouse=True)
def _clean_outbound_env(monkeypatch):
    """Tests set what they need; nothing leaks in from the shell (least of all a real key)."""
    for name in OUTBOUND_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def engine(state_url: str) -> Iterator[sa.Engine]:
    eng = connect_state(state_url)
    migrate(eng)
    yield eng
    eng.dispose()


PATIENT_COLUMNS = [
    "patient_id",
    "first_name",
    "email",
    "mobile",
    "accepted_email_marketing",
    "accepted_sms_marketing",
]


def _insert(con, table: str, columns: list[str], rows) -> None:
    rows = list(rows)
    if not rows:
        return
    frame = pl.DataFrame(rows, schema=columns, orient="row", infer_schema_length=None)
    con.register("_rows", frame.to_arrow())
    try:
        cols = ", ".join(columns)
        con.execute(f"insert into {table} ({cols}) select {cols} from _rows")
    finally:
        con.unregister("_rows")


def build_warehouse(
    path: Path,
    patients: list[tuple],
    membership: list[tuple],
    opt_outs: list[tuple] = (),
    case_features: list[tuple] | None = None,
) -> Path:
    """A DuckDB file with the raw layout and hand-written rows.

    patients: (patient_id, first_name, email, mobile, accepted_email_marketing,
    accepted_sms_marketing); membership: (segment_slug, patient_id, case_id, as_of);
    opt_outs: (patient_id, channel, opted_out_at); case_features: (case_id, patient_id,
    name, expiry_date, days_until_expiry, sessions_left, invoiceable_left).
    """
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        create_empty_raw_tables(con)
        # Frames rather than executemany: row-at-a-time inserts are slow in DuckDB.
        _insert(con, "raw.patients", PATIENT_COLUMNS, patients)
        _insert(con, "raw.opt_outs", ["patient_id", "channel", "opted_out_at"], opt_outs)
        con.execute("create schema if not exists segments")
        con.execute(
            "create table segments.membership (segment_slug varchar, patient_id varchar, "
            "case_id varchar, as_of date, entered_at timestamptz)"
        )
        _insert(
            con,
            "segments.membership",
            ["segment_slug", "patient_id", "case_id", "as_of"],
            membership,
        )
        # The days each segment was evaluated for, as a segment run records them.
        ensure_membership_tables(con)
        con.execute(
            "insert into segments.segment_runs select segment_slug, as_of, count(*), 0, 0, "
            "now() from segments.membership group by all"
        )
        if case_features is not None:
            con.execute("create schema if not exists marts")
            con.execute(
                "create table marts.case_features (case_id varchar, patient_id varchar, "
                "name varchar, expiry_date date, days_until_expiry integer, "
                "sessions_left integer, invoiceable_left decimal(18, 2))"
            )
            _insert(
                con,
                "marts.case_features",
                [
                    "case_id",
                    "patient_id",
                    "name",
                    "expiry_date",
                    "days_until_expiry",
                    "sessions_left",
                    "invoiceable_left",
                ],
                case_features,
            )
    finally:
        con.close()
    return path


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in server on 127.0.0.1 (a free port) for the test's length; its URL."""
    class Quiet(ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:  # noqa: ANN001
            # A client that gave up waiting (a timeout test) closes before the answer:
            # nothing to report.
            import sys

            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Quiet(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Reply:
    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    # Read the request, then close the socket without answering (a lost connection).
    drop: bool = False
    # Wait this long before answering (longer than the client's timeout: no answer in time).
    delay: float = 0.0
    # Answer the status and headers, then close before the body is complete.
    truncate: bool = False
    # Whether the stand-in took the messages for delivery; by default, on a 2xx or when it
    # read the whole request before failing to answer (the provider may well have sent it).
    accepted: bool | None = None

    def takes(self) -> bool:
        if self.accepted is not None:
            return self.accepted
        return self.drop or self.truncate or self.delay > 0 or 200 <= self.status < 300


@dataclass
class FakeSendGrid:
    """What a local stand-in for SendGrid received, and how it answers each request."""

    url: str
    requests: list[dict] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    # Called with the 0-based request number and the parsed body; None → 202.
    script: Callable[[int, dict], Reply | None] = lambda n, body: None

    # (ledger id, address) of every message the stand-in took for delivery.
    delivered: list[tuple[str, str]] = field(default_factory=list)

    @property
    def delivered_addresses(self) -> list[str]:
        return [address for _, address in self.delivered]

    @property
    def ledger_ids(self) -> list[str]:
        return [p["custom_args"]["ledger_id"] for r in self.requests for p in r["personalizations"]]

    @property
    def addresses(self) -> list[str]:
        return [p["to"][0]["email"] for r in self.requests for p in r["personalizations"]]


@pytest.fixture
def window_around_now():
    """A send window of three hours either side of the real time in a zone: a real send
    goes by the real clock, so a test that sends must not depend on when it runs."""

    def window(zone: str) -> str:
        from datetime import datetime, timedelta
        from zoneinfo import ZoneInfo

        now = datetime.now(ZoneInfo(zone))
        start, end = now - timedelta(hours=3), now + timedelta(hours=3)
        return f"send_window: {{start: '{start:%H:%M}', end: '{end:%H:%M}'}}\n"

    return window


@pytest.fixture
def make_warehouse():
    """`build_warehouse`, for tests (importlib mode: helpers travel as fixtures)."""
    return build_warehouse


@pytest.fixture
def reply():
    """The `Reply` class, for scripting the SendGrid stand-in's answers."""
    return Reply


@pytest.fixture
def fake_sendgrid() -> Iterator[FakeSendGrid]:
    state = FakeSendGrid(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 - what a redirect is followed to: a page
            payload = b"<html>please sign in</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with lock:
                n = len(state.requests)
                state.requests.append(body)
                state.headers.append(dict(self.headers))
            if self.path != "/v3/mail/send":
                reply = Reply(404, body='{"errors": [{"message": "not found"}]}')
            else:
                reply = state.script(n, body) or Reply(202, {"X-Message-Id": f"msg-{n}"})
            if reply.takes():
                with lock:
                    state.delivered += [
                        (p["custom_args"]["ledger_id"], p["to"][0]["email"])
                        for p in body["personalizations"]
                    ]
            if reply.delay:
                time.sleep(reply.delay)
            if reply.drop:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            payload = reply.body.encode()
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload) + (100 if reply.truncate else 0)))
            self.end_headers()
            self.wfile.write(payload)
            if reply.truncate:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

    with serving(Handler) as url:
        state.url = url
        yield state


TWILIO_SID = "AC" + "0" * 31 + "1"
TWILIO_TOKEN = "test-auth-token"
TWILIO_SERVICE = "MG" + "0" * 31 + "2"


@dataclass
class FakeTwilio:
    """What a local stand-in for Twilio's Messages API received, and how it answers."""

    url: str
    # Every request's form fields and headers, in order.
    requests: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    # Called with the 0-based request number and the form; None → 201 with a new SID.
    script: Callable[[int, dict], Reply | None] = lambda n, form: None
    # (To, Body, SID) of every message the stand-in took for delivery.
    delivered: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def numbers(self) -> list[str]:
        return [to for to, _, _ in self.delivered]


def twilio_error(status: int, code: int, message: str) -> str:
    """An error body as Twilio writes it."""
    return json.dumps({"code": code, "message": message, "status": status,
                       "more_info": f"https://www.twilio.com/docs/errors/{code}"})  # fmt: skip


@pytest.fixture(name="serving")
def _serving():
    """`serving`, for tests with a stand-in server of their own."""
    return serving


@pytest.fixture(name="twilio_error")
def _twilio_error():
    """`twilio_error`, for scripting the Twilio stand-in's answers."""
    return twilio_error


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    from urllib.parse import parse_qsl

    state = FakeTwilio(url="")
    lock = threading.Lock()
    path = f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            with lock:
                n = len(state.requests)
                state.requests.append(form)
                state.headers.append(dict(self.headers))
            sid = f"SM{n:032x}"
            if self.path != path:
                reply = Reply(404, body=twilio_error(404, 20404, "not found"))
            else:
                reply = state.script(n, form) or Reply(
                    201, {"Content-Type": "application/json"},
                    json.dumps({"sid": sid, "status": "queued", "to": form.get("To"),
                                "body": form.get("Body")}),
                )  # fmt: skip
            if reply.takes():
                with lock:
                    state.delivered.append((form.get("To", ""), form.get("Body", ""), sid))
            if reply.delay:
                time.sleep(reply.delay)
            if reply.drop:
                self.close_connection = True
                self.connection.shutdown(2)
                return
            payload = reply.body.encode()
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with serving(Handler) as url:
        state.url = url
        yield state
