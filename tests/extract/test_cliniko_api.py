"""The Cliniko extractor against a real HTTP server on 127.0.0.1 serving Cliniko-shaped pages.

Time is faked: `FakeTime.sleep` records the wait and moves the clock, so no test really
waits. Expected request lists and sleep durations are worked out by hand in the comments.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from extract.cliniko_api import (
    STATE_FILE_NAME,
    ExtractError,
    SlidingWindowRateLimiter,
    extract,
    extract_with,
    shard_from_api_key,
)


def extract_from_env(out: Path, *args, **kwargs) -> dict[str, int]:
    """The extract as the CLI runs it: CLINIKO_* read from the environment by Settings."""
    import os

    from core.settings import Settings

    return extract_with(Settings.from_environ(os.environ).cliniko, out, *args, **kwargs)

API_KEY = "MS0xLWl4SzYy-secret-test-key-au1"
USER_AGENT = "clinic-audiences tests (tests@clinic.example)"
START = 1_700_000_000.0


class FakeTime:
    def __init__(self, start: float = START) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        # A limiter that never frees a slot would otherwise spin here for ever.
        assert len(self.sleeps) < 1000, "sleeping in a loop"
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Fault:
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False


@dataclass
class FakeCliniko:
    """What the server holds and what it saw; the handler thread reads and appends here."""

    records: dict[str, list[dict[str, Any]]]
    api_key: str = API_KEY
    faults: dict[tuple[str, int], list[Fault]] = field(default_factory=dict)
    fail_forever: set[tuple[str, int]] = field(default_factory=set)
    next_host: str | None = None  # serve links.next on another host (must not be followed)
    tick_per_request: float = 0.0
    time: FakeTime | None = None
    port: int = 0
    seen: list[tuple[str, int]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies_sent: dict[tuple[str, int], bytes] = field(default_factory=dict)
    # What a misbehaving API does: claim another total_entries for an endpoint; answer 404
    # for pages (each listed page once per entry); call a hook after serving a page.
    claimed_total: dict[str, int] = field(default_factory=dict)
    missing_pages: list[tuple[str, int]] = field(default_factory=list)
    after_page: dict[tuple[str, int], Any] = field(default_factory=dict)
    endless: set[str] = field(default_factory=set)  # endpoints whose pages always link on
    next_netloc: str | None = None  # serve links.next with this netloc (e.g. with userinfo)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def page_body(self, resource: str, page: int, per_page: int) -> bytes:
        # An endpoint such as `patients/archived` lists its records under `patients`.
        key = resource.split("/")[0]
        rows = self.records[resource]
        chunk = rows[(page - 1) * per_page : page * per_page]
        host = self.next_host or f"127.0.0.1:{self.port}"
        links = {"self": f"http://127.0.0.1:{self.port}/v1/{resource}?page={page}"}
        if self.next_netloc:
            host = self.next_netloc
        if page * per_page < len(rows) or resource in self.endless:
            links["next"] = f"http://{host}/v1/{resource}?page={page + 1}&per_page={per_page}"
        total = self.claimed_total.get(resource, len(rows))
        return json.dumps({key: chunk, "total_entries": total, "links": links}).encode()


class ClinikoHandler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        fake: FakeCliniko = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        resource = parts.path.removeprefix("/v1/")
        query = parse_qs(parts.query)
        page = int(query.get("page", ["1"])[0])
        per_page = int(query.get("per_page", ["50"])[0])
        with fake.lock:
            fake.seen.append((resource, page))
            fake.queries.append(parts.query)
            fake.headers.append({k.lower(): v for k, v in self.headers.items()})
            if fake.time is not None:
                fake.time.now += fake.tick_per_request
            scripted = fake.faults.get((resource, page))
            fault = scripted.pop(0) if scripted else None
            if fault is None and (resource, page) in fake.fail_forever:
                fault = Fault(500)
        if fault is not None and fault.drop_connection:
            self.close_connection = True
            return
        if fault is not None:
            self._reply(fault.status, b'{"message": "scripted fault"}', fault.headers)
            return
        expected = "Basic " + base64.b64encode(f"{fake.api_key}:".encode()).decode()
        presented = self.headers.get("Authorization", "")
        if presented != expected:
            # Echo the key back, as a careless error page might, so that the extractor's
            # scrubbing of Cliniko's message is what keeps it out of the error text.
            key = base64.b64decode(presented.removeprefix("Basic ")).decode().rstrip(":")
            body = json.dumps({"message": f"API key {key} is not valid"}).encode()
            self._reply(401, body, {})
            return
        with fake.lock:
            vanished = (resource, page) in fake.missing_pages
            if vanished:
                fake.missing_pages.remove((resource, page))
        if resource not in fake.records or vanished:
            self._reply(404, b'{"message": "Not found"}', {})
            return
        body = fake.page_body(resource, page, per_page)
        with fake.lock:
            fake.bodies_sent[(resource, page)] = body
            hook = fake.after_page.pop((resource, page), None)
        if hook is not None:
            hook(fake)
        self._reply(200, body, {})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep tests quiet
        pass


def patient(n: int) -> dict[str, Any]:
    # 19-digit string ids, as Cliniko sends them; no real people.
    return {
        "id": f"10000000000000000{n:02d}",
        "first_name": f"Test{n}",
        "last_name": "Patient",
        "archived_at": "",
        "links": {"self": f"https://api.au1.cliniko.com/v1/patients/{n}"},
    }


def simple(n: int, name: str) -> dict[str, Any]:
    return {"id": str(n), "name": f"{name} {n}"}


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def cliniko(fake_time: FakeTime) -> Iterator[FakeCliniko]:
    fake = FakeCliniko(
        records={
            "patients": [patient(n) for n in range(1, 6)],  # 5 records: pages of 2, 2, 1
            "appointment_types": [simple(1, "Initial consult")],  # 1 page
            "contacts": [],  # an empty first page, no next link
            "invoices": [simple(n, "Invoice") for n in range(1, 7)],  # 6 records: 3 pages
        },
        time=fake_time,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), ClinikoHandler)
    server.fake = fake  # type: ignore[attr-defined]
    fake.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def base_url(fake: FakeCliniko) -> str:
    return f"http://127.0.0.1:{fake.port}/v1"


def run(
    fake: FakeCliniko,
    fake_time: FakeTime,
    out: Path,
    resources: list[str],
    *,
    api_key: str = API_KEY,
    per_page: int = 2,
    **kwargs: Any,
) -> dict[str, int]:
    return extract(
        out,
        api_key=api_key,
        base_url=base_url(fake),
        user_agent=USER_AGENT,
        resources=resources,
        per_page=per_page,
        sleep=fake_time.sleep,
        clock=fake_time.clock,
        **kwargs,
    )


THREE_PAGES = ["page-00001.json", "page-00002.json", "page-00003.json"]


def page_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.json"))


# ------------------------------------------------------------------ happy path


def test_pulls_every_page_of_each_resource_and_saves_it_as_returned(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    counts = run(cliniko, fake_time, tmp_path, ["patients", "appointment_types", "contacts"])

    # 5 patients in pages of 2 -> pages 1, 2, 3; one page each for the other two.
    assert counts == {"patients": 5, "appointment_types": 1, "contacts": 0}
    assert cliniko.seen == [
        ("patients", 1),
        ("patients", 2),
        ("patients", 3),
        ("appointment_types", 1),
        ("contacts", 1),
    ]
    # The first request builds the URL; later ones follow links.next as given.
    assert cliniko.queries[0] == "per_page=2&page=1"
    assert cliniko.queries[1] == "page=2&per_page=2"
    assert page_files(tmp_path / "patients") == THREE_PAGES
    for number in (1, 2, 3):
        saved = (tmp_path / "patients" / f"page-{number:05d}.json").read_bytes()
        assert saved == cliniko.bodies_sent[("patients", number)]
    last = json.loads((tmp_path / "patients" / "page-00003.json").read_text())
    assert [p["id"] for p in last["patients"]] == ["1000000000000000005"]
    assert page_files(tmp_path / "contacts") == ["page-00001.json"]
    assert not list(tmp_path.rglob("*.tmp"))

    for headers in cliniko.headers:
        assert headers["authorization"] == "Basic " + base64.b64encode(
            f"{API_KEY}:".encode()
        ).decode("ascii")
        assert headers["user-agent"] == USER_AGENT
        assert headers["accept"] == "application/json"
    assert fake_time.sleeps == []

    state = json.loads((tmp_path / STATE_FILE_NAME).read_text())
    assert state["resources"]["patients"] == {
        "pages_saved": 3,
        "records": 5,
        "next_url": None,
        "complete": True,
        "unavailable": False,
    }


def test_default_per_page_is_100(cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path) -> None:
    counts = extract(
        tmp_path,
        api_key=API_KEY,
        base_url=base_url(cliniko),
        resources=["invoices"],
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    )
    # 6 invoices fit one page of 100.
    assert counts == {"invoices": 6}
    assert cliniko.queries == ["per_page=100&page=1"]
    assert cliniko.headers[0]["user-agent"] == "clinic-audiences (data-team@clinic.example)"


# ------------------------------------------------------------------ faults


def test_429_waits_for_the_reset_then_retries_the_same_page(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.faults[("patients", 2)] = [
        # epoch seconds: START + 30 -> wait 30 s (the clock does not move between requests)
        Fault(429, {"X-RateLimit-Reset": str(int(START) + 30)}),
        # a small number is a delay: 7 s
        Fault(429, {"X-RateLimit-Reset": "7"}),
        # no reset header, Retry-After 3 -> 3 s
        Fault(429, {"Retry-After": "3"}),
    ]
    counts = run(cliniko, fake_time, tmp_path, ["patients"])

    assert counts == {"patients": 5}
    assert fake_time.sleeps == [30.0, 7.0, 3.0]
    assert cliniko.seen == [("patients", 1)] + [("patients", 2)] * 4 + [("patients", 3)]
    assert page_files(tmp_path / "patients") == THREE_PAGES


def test_server_errors_and_dropped_connections_back_off_then_succeed(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.faults[("patients", 1)] = [Fault(500), Fault(drop_connection=True), Fault(503)]
    counts = run(cliniko, fake_time, tmp_path, ["patients"])

    # three failures -> backoff 1, 2, 4 s; the fourth attempt succeeds.
    assert fake_time.sleeps == [1.0, 2.0, 4.0]
    assert cliniko.seen[:4] == [("patients", 1)] * 4
    assert counts == {"patients": 5}


def test_401_fails_at_once_with_a_hint_and_without_the_key(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    wrong_key = "wrong-secret-key-au1"
    with pytest.raises(ExtractError) as err:
        run(cliniko, fake_time, tmp_path, ["patients"], api_key=wrong_key)

    message = str(err.value)
    assert "HTTP 401" in message
    assert "check CLINIKO_API_KEY" in message
    assert "patients page 1" in message
    assert "Cliniko says: API key *** is not valid" in message
    assert wrong_key not in message
    assert cliniko.seen == [("patients", 1)]  # no retry
    assert fake_time.sleeps == []
    assert page_files(tmp_path / "patients") == []


def test_404_names_the_base_url_to_check(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    with pytest.raises(ExtractError, match="HTTP 404.*CLINIKO_API_BASE_URL"):
        run(cliniko, fake_time, tmp_path, ["businesses"])  # the server has no businesses
    assert cliniko.seen == [("businesses", 1)]


def test_link_to_another_host_is_not_followed(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.next_host = "elsewhere.example:8080"
    with pytest.raises(ExtractError, match="refusing to send the API key"):
        run(cliniko, fake_time, tmp_path, ["patients"])
    assert cliniko.seen == [("patients", 1)]


# ------------------------------------------------------------------ crash and resume


def test_gives_up_after_six_attempts_then_resumes_from_the_failed_page(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.fail_forever.add(("patients", 2))
    with pytest.raises(ExtractError) as err:
        run(cliniko, fake_time, tmp_path, ["patients", "invoices"])

    assert "patients page 2" in str(err.value)
    assert "6 attempts" in str(err.value)
    # attempts 1..6; backoff after attempts 1..5 is 1, 2, 4, 8, 16 s.
    assert fake_time.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert cliniko.seen == [("patients", 1)] + [("patients", 2)] * 6
    assert page_files(tmp_path / "patients") == ["page-00001.json"]
    page_1 = (tmp_path / "patients" / "page-00001.json").read_bytes()

    # The outage ends; the same command picks up at page 2.
    cliniko.fail_forever.clear()
    cliniko.seen.clear()
    counts = run(cliniko, fake_time, tmp_path, ["patients", "invoices"])

    # patients: pages 2 and 3 only (page 1 was saved); invoices: 6 in pages of 2 -> 1, 2, 3.
    assert cliniko.seen == [
        ("patients", 2),
        ("patients", 3),
        ("invoices", 1),
        ("invoices", 2),
        ("invoices", 3),
    ]
    # patients: 2 (page 1, first run) + 2 + 1 = 5
    assert counts == {"patients": 5, "invoices": 6}
    assert (tmp_path / "patients" / "page-00001.json").read_bytes() == page_1
    assert page_files(tmp_path / "patients") == THREE_PAGES


class Crash(Exception):
    pass


def test_crash_after_a_saved_page_resumes_with_the_next_and_skips_finished_resources(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    def crash_after_invoices_page_2(message: str) -> None:
        if message.startswith("invoices: page 2 saved"):
            raise Crash(message)

    with pytest.raises(Crash):
        run(
            cliniko,
            fake_time,
            tmp_path,
            ["patients", "invoices"],
            progress=crash_after_invoices_page_2,
        )
    assert cliniko.seen == [
        ("patients", 1),
        ("patients", 2),
        ("patients", 3),
        ("invoices", 1),
        ("invoices", 2),
    ]

    cliniko.seen.clear()
    messages: list[str] = []
    counts = run(cliniko, fake_time, tmp_path, ["patients", "invoices"], progress=messages.append)

    # patients finished in the first run: nothing fetched; invoices continue at page 3.
    assert cliniko.seen == [("invoices", 3)]
    assert counts == {"patients": 5, "invoices": 6}
    assert "patients: already complete (3 pages, 5 records), skipped" in messages
    assert "invoices: resuming after page 2" in messages
    assert page_files(tmp_path / "invoices") == THREE_PAGES


def test_a_page_written_after_the_last_state_save_is_fetched_again(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    # A crash between saving the page file and saving the state: the state says 1 page,
    # the folder holds 2. The state is what counts, so page 2 is fetched and rewritten.
    cliniko.fail_forever.add(("patients", 2))
    with pytest.raises(ExtractError):
        run(cliniko, fake_time, tmp_path, ["patients"])
    (tmp_path / "patients" / "page-00002.json").write_text('{"patients": [{"id": "stale"}]}')
    (tmp_path / "patients" / ".page-00007.json.tmp").write_text('{"patients": [')
    cliniko.fail_forever.clear()
    cliniko.seen.clear()

    counts = run(cliniko, fake_time, tmp_path, ["patients"])

    assert cliniko.seen == [("patients", 2), ("patients", 3)]
    assert counts == {"patients": 5}
    saved = (tmp_path / "patients" / "page-00002.json").read_bytes()
    assert saved == cliniko.bodies_sent[("patients", 2)]
    assert sorted(p.name for p in (tmp_path / "patients").iterdir()) == THREE_PAGES


def test_pages_from_an_unknown_run_need_restart(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    (tmp_path / "patients").mkdir()
    (tmp_path / "patients" / "page-00009.json").write_text('{"patients": []}')

    with pytest.raises(ExtractError, match="--restart"):
        run(cliniko, fake_time, tmp_path, ["patients"])
    assert cliniko.seen == []

    counts = run(cliniko, fake_time, tmp_path, ["patients"], restart=True)
    assert counts == {"patients": 5}
    assert page_files(tmp_path / "patients") == THREE_PAGES


def test_restart_fetches_a_complete_resource_again(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    run(cliniko, fake_time, tmp_path, ["appointment_types"])
    cliniko.seen.clear()
    run(cliniko, fake_time, tmp_path, ["appointment_types"])
    assert cliniko.seen == []  # complete: skipped
    run(cliniko, fake_time, tmp_path, ["appointment_types"], restart=True)
    assert cliniko.seen == [("appointment_types", 1)]


def test_state_from_another_api_host_is_not_mixed_in(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    run(cliniko, fake_time, tmp_path, ["appointment_types"])
    with pytest.raises(ExtractError, match="holds an extract from"):
        extract(
            tmp_path,
            api_key=API_KEY,
            base_url="http://127.0.0.1:9/v1",
            resources=["appointment_types"],
            sleep=fake_time.sleep,
            clock=fake_time.clock,
        )


def test_unknown_resource_is_rejected_with_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ExtractError, match="'appointments'.*individual_appointments"):
        extract(
            tmp_path, api_key=API_KEY, base_url="http://127.0.0.1:9/v1", resources=["appointments"]
        )


# ------------------------------------------------------------------ rate limit


def test_sliding_window_makes_the_201st_request_in_a_minute_wait() -> None:
    fake_time = FakeTime(start=0.0)
    limiter = SlidingWindowRateLimiter(200, 60.0, clock=fake_time.clock, sleep=fake_time.sleep)
    for _ in range(200):  # starts at 0.00, 0.25, ..., 49.75
        limiter.acquire()
        fake_time.now += 0.25
    assert fake_time.sleeps == []
    # 201st at t=50.0: the oldest start (0.0) frees its slot at 60.0 -> wait 10.0 s.
    assert limiter.acquire() == 10.0
    assert fake_time.sleeps == [10.0]
    # 202nd at 60.25: the start at 0.25 left the window at 60.25 -> no wait.
    fake_time.now += 0.25
    assert limiter.acquire() == 0.0
    assert fake_time.sleeps == [10.0]


def test_extract_waits_before_the_201st_request(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 400 fsyncs cost seconds on a busy disk and say nothing about rate limiting.
    monkeypatch.setattr("extract.cliniko_api.os.fsync", lambda fd: None)
    # 201 patients, one per page -> 201 requests. Each request moves the fake clock 0.25 s,
    # so request k starts at START + 0.25 (k - 1): the 200th at +49.75, and the 201st at
    # +50.0 finds the window full until the first start (+0.0) expires at +60.0 -> 10 s.
    cliniko.records["patients"] = [patient(n % 100) for n in range(201)]
    cliniko.tick_per_request = 0.25
    counts = run(cliniko, fake_time, tmp_path, ["patients"], per_page=1)

    assert counts == {"patients": 201}
    assert fake_time.sleeps == [10.0]
    assert len(cliniko.seen) == 201
    assert len(page_files(tmp_path / "patients")) == 201


def test_lower_limit_with_a_still_clock(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    # 2 requests per minute, clock still: pages 1 and 2 at START; page 3 waits START+60-START.
    run(cliniko, fake_time, tmp_path, ["patients"], max_requests_per_minute=2)
    assert fake_time.sleeps == [60.0]
    assert cliniko.seen == [("patients", 1), ("patients", 2), ("patients", 3)]


# ------------------------------------------------------------------ the key stays secret


def test_api_key_never_appears_in_files_messages_or_logs(
    cliniko: FakeCliniko,
    fake_time: FakeTime,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = [API_KEY, base64.b64encode(f"{API_KEY}:".encode()).decode()]
    messages: list[str] = []
    cliniko.faults[("patients", 1)] = [Fault(502), Fault(429, {"Retry-After": "2"})]
    cliniko.fail_forever.add(("invoices", 2))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ExtractError) as err:
        run(
            cliniko,
            fake_time,
            tmp_path,
            ["patients", "contacts", "invoices"],
            progress=messages.append,
        )

    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 6  # state + 3 patients pages + 1 contacts page + 1 invoices page
    texts = [str(err.value), repr(err.value), caplog.text, *messages]
    assert any("HTTP 502" in m for m in messages)  # the messages do talk about the failures
    for secret in secrets:
        assert all(secret.encode() not in blob for blob in written)
        assert all(secret not in text for text in texts)


# ------------------------------------------------------------------ settings from the env


def test_shard_comes_from_the_key_suffix() -> None:
    assert shard_from_api_key("MS0xLWl4SzYy-au2") == "au2"
    assert shard_from_api_key("MS0xLWl4SzYy-uk1") == "uk1"
    assert shard_from_api_key("MS0xLWl4SzYy") == "au1"  # keys from before shards
    assert shard_from_api_key("abc-notashard") == "au1"


def test_missing_api_key_says_how_to_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLINIKO_API_KEY", raising=False)
    with pytest.raises(ExtractError, match="CLINIKO_API_KEY is not set.*export CLINIKO_API_KEY"):
        extract_from_env(tmp_path)


def test_extract_from_env_uses_the_environment(
    cliniko: FakeCliniko, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLINIKO_API_KEY", API_KEY)
    monkeypatch.setenv("CLINIKO_API_BASE_URL", base_url(cliniko))
    monkeypatch.setenv("CLINIKO_USER_AGENT", "audiences-env-test (ops@clinic.example)")
    monkeypatch.delenv("CLINIKO_SHARD", raising=False)
    messages: list[str] = []

    counts = extract_from_env(tmp_path, ["invoices"], messages.append)

    assert counts == {"invoices": 6}
    assert cliniko.queries == ["per_page=100&page=1"]
    assert cliniko.headers[0]["user-agent"] == "audiences-env-test (ops@clinic.example)"
    assert messages[-1] == "invoices: done, 1 page, 6 records"


def test_bad_shard_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINIKO_API_KEY", API_KEY)
    monkeypatch.setenv("CLINIKO_SHARD", "api.evil")
    with pytest.raises(ExtractError, match="CLINIKO_SHARD 'api.evil' is not a Cliniko shard"):
        extract_from_env(tmp_path)


# ------------------------------------------------ every endpoint, and pulls that do not add up


def deleted_record(path: str, n: int) -> dict[str, Any]:
    # What Cliniko's deleted endpoints list: when, and the record's own link.
    return {"deleted_at": "2016-07-22T15:10:08Z",
            "links": {"self": f"https://api.au1.cliniko.com/v1/{path.split('/')[0]}/{n}"}}


def test_default_pulls_every_endpoint_the_adapter_reads_into_its_own_folder(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    from ingest.cliniko import ALL_ENDPOINTS

    paths = [e.path for e in ALL_ENDPOINTS]
    # The adapter's reading list, written out: the lists and their variants.
    assert paths == [
        "patients", "patients/archived", "patients/deleted",
        "practitioners", "practitioners/inactive", "businesses",
        "appointment_types", "appointment_types/archived",
        "individual_appointments", "individual_appointments/cancelled",
        "individual_appointments/deleted", "invoices", "invoices/deleted",
        "invoice_items", "invoice_items/deleted", "patient_cases",
        "contacts", "attendees", "attendees/cancelled", "attendees/deleted",
    ]  # fmt: skip
    cliniko.records = {path: [] for path in paths}
    cliniko.records["practitioners"] = [simple(1, "Active")]
    cliniko.records["practitioners/inactive"] = [simple(2, "Left"), simple(3, "Left")]
    cliniko.records["individual_appointments/deleted"] = [
        deleted_record("individual_appointments", n) for n in (7, 8, 9)
    ]
    counts = run(cliniko, fake_time, tmp_path, None)  # type: ignore[arg-type]

    folders = [p.replace("/", "_") for p in paths]
    assert list(counts) == folders
    assert counts["practitioners"] == 1 and counts["practitioners_inactive"] == 2
    assert counts["individual_appointments_deleted"] == 3
    assert sum(counts.values()) == 6
    # 3 deleted appointments in pages of 2 -> 2 pages; every other endpoint 1 page.
    assert len(cliniko.seen) == len(paths) + 1
    assert [r for r, _ in cliniko.seen][:3] == ["patients", "patients/archived", "patients/deleted"]
    inactive = json.loads((tmp_path / "practitioners_inactive" / "page-00001.json").read_text())
    assert [p["id"] for p in inactive["practitioners"]] == ["2", "3"]
    assert page_files(tmp_path / "individual_appointments_deleted") == THREE_PAGES[:2]
    # Asking for one by its API path or its folder name is the same.
    assert run(cliniko, fake_time, tmp_path / "again", ["practitioners/inactive"]) == {
        "practitioners_inactive": 2
    }


def test_429_on_a_variant_endpoint_waits_for_x_ratelimit_reset(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.records["practitioners/inactive"] = [simple(n, "Left") for n in (1, 2, 3)]
    # page 2: reset in epoch seconds, 45 s after the (still) clock.
    cliniko.faults[("practitioners/inactive", 2)] = [
        Fault(429, {"X-RateLimit-Reset": str(int(START) + 45)})
    ]
    counts = run(cliniko, fake_time, tmp_path, ["practitioners/inactive"])

    assert counts == {"practitioners_inactive": 3}
    assert fake_time.sleeps == [45.0]
    assert cliniko.seen == [("practitioners/inactive", 1), ("practitioners/inactive", 2),
                            ("practitioners/inactive", 2)]  # fmt: skip


def test_a_page_missing_mid_pull_is_pulled_again_from_page_one(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.missing_pages.append(("patients", 2))  # page 1 links to page 2, which 404s once
    messages: list[str] = []
    counts = run(cliniko, fake_time, tmp_path, ["patients"], progress=messages.append)

    assert counts == {"patients": 5}
    assert cliniko.seen == [("patients", 1), ("patients", 2),
                            ("patients", 1), ("patients", 2), ("patients", 3)]  # fmt: skip
    assert any("page 2, which page 1 linked to, is not found" in m for m in messages)
    assert page_files(tmp_path / "patients") == THREE_PAGES
    state = json.loads((tmp_path / STATE_FILE_NAME).read_text())
    assert state["resources"]["patients"]["complete"] is True


def test_a_page_missing_on_every_pull_refuses_the_extract_and_ingest_refuses_the_folder(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    from ingest.cliniko import check_complete, read_cliniko_text
    from ingest.csv_reader import ExtractFileError
    from ingest.entities import entity

    cliniko.missing_pages += [("patients", 3), ("patients", 3)]
    with pytest.raises(ExtractError) as err:
        run(cliniko, fake_time, tmp_path, ["patients"])

    assert "patients: the pull does not add up after 2 tries" in str(err.value)
    assert "page 3, which page 2 linked to, is not found" in str(err.value)
    # Pages 1 and 2 of the second pull are kept, and say they are not the whole list.
    assert page_files(tmp_path / "patients") == THREE_PAGES[:2]
    state = json.loads((tmp_path / STATE_FILE_NAME).read_text())
    assert state["resources"]["patients"]["complete"] is False
    with pytest.raises(ExtractFileError, match="pull of patients is incomplete: the extract "
                       r"stopped before these were complete: patients \(0 page\(s\) pulled\)"):
        read_cliniko_text(tmp_path, entity("patients"))
    # Without the state file, the pages themselves say so.
    (tmp_path / STATE_FILE_NAME).rename(tmp_path / "state.bak")
    with pytest.raises(ExtractFileError, match="links to page 3 of patients .*, which the folder"):
        read_cliniko_text(tmp_path, entity("patients"))
    (tmp_path / "state.bak").rename(tmp_path / STATE_FILE_NAME)

    # The API recovers: the next run starts the endpoint over and completes it.
    cliniko.seen.clear()
    assert run(cliniko, fake_time, tmp_path, ["patients"]) == {"patients": 5}
    assert cliniko.seen == [("patients", 1), ("patients", 2), ("patients", 3)]
    assert check_complete(tmp_path / "patients", "patients") is None
    # Only patients was pulled, so the extract is still not the whole clinic.
    with pytest.raises(ExtractFileError, match=r"patients/archived \(not pulled\)"):
        read_cliniko_text(tmp_path, entity("patients"))
    frame, rejects, total = read_cliniko_text(tmp_path, entity("patients"), accept_incomplete=True)
    assert (frame.height, rejects.height, total) == (5, 0, 5)


def test_total_entries_that_the_pages_never_reach_refuses_the_extract(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    # The first page says 952 entries and no page links further: 5 records is not 952.
    cliniko.claimed_total["patients"] = 952
    with pytest.raises(ExtractError, match="hold 5 record.*total_entries 952"):
        run(cliniko, fake_time, tmp_path, ["patients"])
    assert len(cliniko.seen) == 6  # two pulls of three pages


def test_a_record_added_while_pulling_is_pulled_again_and_then_adds_up(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    # After page 1 (total 5) is served, a sixth patient is created: pages 2 and 3 say 6.
    cliniko.after_page[("patients", 1)] = lambda fake: fake.records["patients"].append(
        patient(6)
    )
    counts = run(cliniko, fake_time, tmp_path, ["patients"])

    # First pull: 2 + 2 + 2 records under totals 5, 6, 6 -> pulled again (6 in 3 pages).
    assert counts == {"patients": 6}
    assert cliniko.seen == [("patients", n) for n in (1, 2, 3, 1, 2, 3)]
    bodies = [json.loads((tmp_path / "patients" / name).read_text()) for name in THREE_PAGES]
    assert {b["total_entries"] for b in bodies} == {6}


def test_a_complete_endpoint_whose_pages_were_removed_is_pulled_again(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    run(cliniko, fake_time, tmp_path, ["patients"])
    (tmp_path / "patients" / "page-00003.json").unlink()
    cliniko.seen.clear()
    messages: list[str] = []
    assert run(cliniko, fake_time, tmp_path, ["patients"], progress=messages.append) == {
        "patients": 5
    }
    assert cliniko.seen == [("patients", 1), ("patients", 2), ("patients", 3)]
    assert any("no longer add up" in m for m in messages)


# ------------------------------------------------ what a second hostile pass found


def every_endpoint(fake: FakeCliniko) -> None:
    from ingest.cliniko import ALL_ENDPOINTS

    fake.records = {e.path: [] for e in ALL_ENDPOINTS}
    fake.records["patients"] = [patient(n) for n in range(1, 4)]
    fake.records["individual_appointments"] = [
        {"id": str(n), "starts_at": f"2026-01-0{n}T09:00:00Z",
         "patient": {"links": {"self": "https://api.au1.cliniko.com/v1/patients/1"}}}
        for n in (1, 2)
    ]  # fmt: skip


def test_an_extract_that_stopped_halfway_is_refused_by_ingest(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    import duckdb

    from ingest.csv_reader import ExtractFileError
    from ingest.load import load_all

    every_endpoint(cliniko)
    cliniko.fail_forever.add(("invoices", 1))
    with pytest.raises(ExtractError, match="invoices page 1: HTTP 500"):
        run(cliniko, fake_time, tmp_path, None)  # type: ignore[arg-type]
    # invoices and every endpoint after it were never pulled: not an empty clinic.
    with pytest.raises(ExtractFileError) as err:
        load_all(duckdb.connect(), tmp_path, "cliniko")
    message = str(err.value)
    assert "pull of invoices is incomplete: the extract stopped before these were complete: " \
           "invoices (0 page(s) pulled), invoices/deleted (not pulled)" in message  # fmt: skip
    assert "pull of invoice_items is incomplete" in message
    # Patients were pulled, but not the contacts that name their referrers.
    assert "pull of patients is incomplete: the extract stopped before these were complete: " \
           "contacts (not pulled)" in message  # fmt: skip


def test_a_variant_endpoint_the_account_lacks_is_skipped_and_the_extract_is_whole(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    import duckdb

    from ingest.load import load_all

    every_endpoint(cliniko)
    del cliniko.records["attendees/deleted"]  # 404 on its first page
    messages: list[str] = []
    counts = run(cliniko, fake_time, tmp_path, None, progress=messages.append)  # type: ignore[arg-type]
    assert counts["attendees_deleted"] == 0 and not (tmp_path / "attendees_deleted").exists()
    assert "attendees_deleted: not offered by this account (HTTP 404), skipped" in messages
    results = load_all(duckdb.connect(), tmp_path, "cliniko")
    assert results["patients"].loaded == 3 and results["appointments"].loaded == 2
    # A main endpoint answering 404 is still a wrong base URL, not a missing variant.
    del cliniko.records["patients"]
    with pytest.raises(ExtractError, match="HTTP 404.*CLINIKO_API_BASE_URL"):
        run(cliniko, fake_time, tmp_path / "b", ["patients"])


def test_a_restart_against_another_account_must_pull_everything(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    run(cliniko, fake_time, tmp_path, ["appointment_types"])
    with pytest.raises(ExtractError, match="a restart against http://127.0.0.1:9/v1 must pull "
                       "every endpoint, not only patients"):  # fmt: skip
        extract(tmp_path, api_key=API_KEY, base_url="http://127.0.0.1:9/v1",
                resources=["patients"], restart=True, sleep=fake_time.sleep,
                clock=fake_time.clock)  # fmt: skip


def test_a_state_file_of_the_earlier_format_is_not_resumed(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    (tmp_path / STATE_FILE_NAME).write_text(json.dumps({
        "format": 1, "base_url": base_url(cliniko),
        "resources": {"patients": {"pages_saved": 3, "records": 5, "next_url": None,
                                   "complete": True}},
    }))  # fmt: skip
    with pytest.raises(ExtractError, match="format 1, from another version.*--restart"):
        run(cliniko, fake_time, tmp_path, ["patients"])
    with pytest.raises(ExtractError, match="format 1"):  # a partial restart keeps the rule
        run(cliniko, fake_time, tmp_path, ["patients"], restart=True)
    every_endpoint(cliniko)
    counts = run(cliniko, fake_time, tmp_path, None, restart=True)  # type: ignore[arg-type]
    assert counts["patients"] == 3


def test_a_reset_header_that_is_not_a_number_falls_back_to_retry_after(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.faults[("patients", 1)] = [
        Fault(429, {"X-RateLimit-Reset": "nan", "Retry-After": "4"}),
        Fault(429, {"X-RateLimit-Reset": "inf"}),  # no usable header at all: 60 s
    ]
    assert run(cliniko, fake_time, tmp_path, ["patients"]) == {"patients": 5}
    assert fake_time.sleeps == [4.0, 60.0]


def test_a_redirect_is_not_followed(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.faults[("patients", 1)] = [Fault(302, {"Location": "http://login.example/sso"})]
    with pytest.raises(ExtractError) as err:
        run(cliniko, fake_time, tmp_path, ["patients"])
    assert "HTTP 302 (a redirect to login.example); check CLINIKO_API_BASE_URL" in str(err.value)
    assert cliniko.seen == [("patients", 1)]


def test_an_endless_next_chain_stops_past_total_entries(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    # 3 patients in pages of 2, but every page links to another (empty) one.
    cliniko.records["patients"] = [patient(n) for n in range(1, 4)]
    cliniko.endless.add("patients")
    with pytest.raises(ExtractError, match="go on past the 3 records total_entries gives"):
        run(cliniko, fake_time, tmp_path, ["patients"])
    # Pages hold at most 2, so 3 records fill ceil(3 / 2) = 2 pages; a link on from page
    # 2 + 2 = 4 is past any end. Two pulls of 4 pages each.
    assert cliniko.seen == [("patients", n) for n in (1, 2, 3, 4)] * 2


def test_a_next_link_carrying_credentials_is_refused_without_showing_them(
    cliniko: FakeCliniko, fake_time: FakeTime, tmp_path: Path
) -> None:
    cliniko.next_netloc = f"{API_KEY}@127.0.0.1:{cliniko.port}"
    with pytest.raises(ExtractError) as err:
        run(cliniko, fake_time, tmp_path, ["patients"])
    assert "refusing to send the API key there" in str(err.value)
    assert API_KEY not in str(err.value)
