"""Pull the Cliniko REST API into the page-file layout of `docs/extract-formats.md`.

Every endpoint the Cliniko adapter reads (`ingest.cliniko.ALL_ENDPOINTS`: the lists, and
their archived, deleted, cancelled and inactive variants) is fetched page by page
(`per_page=100`, then `links.next` until it is absent) and each page body is saved byte for
byte as `<out>/<folder>/page-00001.json`, ... (`patients/archived` → `patients_archived`).
The run is resumable: after each saved page a state file (`_extract_state.json`) records
how far every endpoint got, so a re-run after a crash continues with the next page and
skips finished endpoints.

A finished endpoint is checked like ingest checks it (`ingest.cliniko.check_complete`):
its records must add up to the `total_entries` every page gave and its `links.next` chain
must be whole. A pull that does not add up (records changed while it ran, a page that went
missing) is pulled again from its first page once; if it still does not add up the extract
stops with what is missing, and the folder is left for ingest to refuse.

Cliniko allows 200 requests per minute per API key and answers `429` with an
`X-RateLimit-Reset` header when that is exceeded; a client-side sliding window keeps us
under the limit and a 429 is still honoured when it happens (another tool may share the
key). The API key is a password: it is sent only as the basic-auth user name to the
configured host and is scrubbed from every message this module produces.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from core.settings import ClinikoAccess
from ingest.cliniko import ALL_ENDPOINTS, STATE_FILE_NAME, Endpoint, check_complete
from ingest.csv_reader import ExtractFileError

logger = logging.getLogger(__name__)

# Folder name → endpoint, for everything an extract is pulled from.
ENDPOINTS_BY_FOLDER: dict[str, Endpoint] = {e.folder: e for e in ALL_ENDPOINTS}
RESOURCES: tuple[str, ...] = tuple(ENDPOINTS_BY_FOLDER)
# How often a finished endpoint whose pages do not add up is pulled again from page 1.
MAX_PULLS = 2
# 2: one entry per endpoint folder (variants included), and `unavailable`.
STATE_FORMAT_VERSION = 2
DEFAULT_SHARD = "au1"
DEFAULT_USER_AGENT = "clinic-audiences (data-team@clinic.example)"
DEFAULT_PER_PAGE = 100
DEFAULT_MAX_REQUESTS_PER_MINUTE = 200
RATE_WINDOW_SECONDS = 60.0

# Transient failures (5xx, dropped connections) back off 1, 2, 4, 8, 16 s: about half a
# minute in total, long enough to ride out a deploy or a load-balancer blip.
MAX_ATTEMPTS = 6
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
# A reset header further away than this is treated as clock skew: Cliniko's window is
# one minute, so waiting longer than two never helps.
MAX_RATE_LIMIT_WAIT_SECONDS = 120.0
MIN_RATE_LIMIT_WAIT_SECONDS = 1.0
MAX_RATE_LIMITED_RETRIES = 10
# X-RateLimit-Reset values at least this large are epoch seconds (2001-09-09 onwards);
# smaller ones are a number of seconds to wait.
EPOCH_THRESHOLD = 1_000_000_000
REQUEST_TIMEOUT = (10.0, 60.0)  # connect, read

_SHARD_PATTERN = re.compile(r"^[a-z]{2}\d{1,2}$", re.IGNORECASE)
_PAGE_FILE_PATTERN = re.compile(r"^page-(\d+)\.json$")

Progress = Callable[[str], None]

# Dropped connections, timeouts and bodies cut off mid-transfer are worth another try.
_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class ExtractError(RuntimeError):
    """The extract cannot go on; the message says what failed and how to fix it."""


class PullChanged(Exception):
    """An endpoint's pages stopped adding up during the pull (internal: pull it again)."""


class EndpointUnavailable(Exception):
    """A variant endpoint answered 404 on its first page (internal: the account lacks it)."""


def _whole_number(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


# --------------------------------------------------------------------------- settings


def shard_from_api_key(api_key: str) -> str:
    """Cliniko appends the shard to the key (`...-au2`); keys from before shards are au1."""
    _, sep, suffix = api_key.rpartition("-")
    if sep and _SHARD_PATTERN.match(suffix):
        return suffix.lower()
    return DEFAULT_SHARD


def extract_with(
    access: ClinikoAccess,
    out_dir: Path,
    resources: Sequence[str] | None = None,
    progress: Progress | None = None,
    *,
    restart: bool = False,
) -> dict[str, int]:
    """Run the extract with the configured Cliniko access (`CLINIKO_*`); returns records
    per resource."""
    api_key = access.api_key.strip()
    if not api_key:
        raise ExtractError(
            "CLINIKO_API_KEY is not set. Create an API key in Cliniko (My Info -> Manage API "
            "keys) and export it, e.g. `export CLINIKO_API_KEY=...-au1`; the shard suffix "
            "(au1, uk1, ...) picks the API host unless CLINIKO_SHARD says otherwise."
        )
    shard = access.shard.strip() or shard_from_api_key(api_key)
    if not _SHARD_PATTERN.match(shard):
        raise ExtractError(
            f"CLINIKO_SHARD {shard!r} is not a Cliniko shard; use a value such as au1, au2, "
            "uk1 or ca1 (the suffix of your API key)"
        )
    base_url = access.base_url.strip() or f"https://api.{shard.lower()}.cliniko.com/v1"
    user_agent = access.user_agent.strip() or DEFAULT_USER_AGENT
    return extract(
        out_dir,
        api_key=api_key,
        base_url=base_url,
        user_agent=user_agent,
        resources=resources,
        progress=progress,
        restart=restart,
    )


def extract(
    out_dir: Path,
    *,
    api_key: str,
    base_url: str,
    user_agent: str = DEFAULT_USER_AGENT,
    resources: Sequence[str] | None = None,
    per_page: int = DEFAULT_PER_PAGE,
    max_requests_per_minute: int = DEFAULT_MAX_REQUESTS_PER_MINUTE,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    progress: Progress | None = None,
    restart: bool = False,
) -> dict[str, int]:
    """Pull `resources` (default: all of them) into `out_dir`; returns records per resource."""
    extractor = ClinikoExtractor(
        api_key=api_key,
        base_url=base_url,
        user_agent=user_agent,
        per_page=per_page,
        max_requests_per_minute=max_requests_per_minute,
        sleep=sleep,
        clock=clock,
        progress=progress,
    )
    try:
        return extractor.run(Path(out_dir), resources=resources, restart=restart)
    finally:
        extractor.close()


# ----------------------------------------------------------------------- rate limiting


class SlidingWindowRateLimiter:
    """At most `max_requests` starts in any rolling `window_seconds`.

    A request started at time t occupies a slot until t + window; when all slots are taken
    the caller sleeps until the oldest one frees up.
    """

    def __init__(
        self,
        max_requests: int,
        window_seconds: float = RATE_WINDOW_SECONDS,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, got {max_requests}")
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()

    def acquire(self) -> float:
        """Block until a request may start; returns the seconds spent waiting."""
        waited = 0.0
        while True:
            now = self._clock()
            while self._starts and self._starts[0] <= now - self.window_seconds:
                self._starts.popleft()
            if len(self._starts) < self.max_requests:
                self._starts.append(now)
                return waited
            wait = self._starts[0] + self.window_seconds - now
            self._sleep(wait)
            waited += wait


# ------------------------------------------------------------------------ state & files


@dataclass
class ResourceState:
    pages_saved: int = 0
    records: int = 0
    next_url: str | None = None
    complete: bool = False
    # A variant endpoint the account does not offer (404 on its first page).
    unavailable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "pages_saved": self.pages_saved,
            "records": self.records,
            "next_url": self.next_url,
            "complete": self.complete,
            "unavailable": self.unavailable,
        }


@dataclass
class ExtractState:
    base_url: str
    resources: dict[str, ResourceState] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> ExtractState | None:
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != STATE_FORMAT_VERSION:
                raise ValueError(
                    f"it is format {raw.get('format')!r}, from another version of the "
                    f"extractor (this one writes {STATE_FORMAT_VERSION})"
                )
            resources = {
                name: ResourceState(
                    pages_saved=int(entry["pages_saved"]),
                    records=int(entry["records"]),
                    next_url=entry["next_url"],
                    complete=bool(entry["complete"]),
                    unavailable=bool(entry.get("unavailable", False)),
                )
                for name, entry in raw["resources"].items()
            }
            return cls(base_url=str(raw["base_url"]), resources=resources)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ExtractError(
                f"{path} is not a readable extract state file ({exc}); "
                "re-run with --restart to start the extract over"
            ) from None

    def save(self, path: Path) -> None:
        body = {
            "format": STATE_FORMAT_VERSION,
            "base_url": self.base_url,
            "resources": {name: entry.to_json() for name, entry in self.resources.items()},
        }
        write_atomic(path, json.dumps(body, indent=2).encode("utf-8"))


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _pages(count: int) -> str:
    return "1 page" if count == 1 else f"{count} pages"


def page_file_name(number: int) -> str:
    return f"page-{number:05d}.json"


def saved_page_numbers(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    numbers = []
    for child in folder.iterdir():
        match = _PAGE_FILE_PATTERN.match(child.name)
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def remove_pages(folder: Path, *, above: int = 0) -> None:
    """Delete page files numbered above `above` and leftover temporary files."""
    if not folder.is_dir():
        return
    for number in saved_page_numbers(folder):
        if number > above:
            (folder / page_file_name(number)).unlink()
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink()


# --------------------------------------------------------------------------- extractor


class ClinikoExtractor:
    """Fetches Cliniko list endpoints page by page with rate limiting, retries and resume."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        user_agent: str = DEFAULT_USER_AGENT,
        per_page: int = DEFAULT_PER_PAGE,
        max_requests_per_minute: int = DEFAULT_MAX_REQUESTS_PER_MINUTE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        progress: Progress | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if not api_key:
            raise ExtractError("an empty Cliniko API key was given; set CLINIKO_API_KEY")
        if not 1 <= per_page <= 100:
            raise ExtractError(
                f"per_page must be between 1 and 100 (Cliniko's maximum), got {per_page}"
            )
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ExtractError(
                f"Cliniko base URL {base_url!r} is not an http(s) URL; fix CLINIKO_API_BASE_URL "
                "or unset it to use https://api.<shard>.cliniko.com/v1"
            )
        self.base_url = base_url.rstrip("/")
        self._origin = (parts.scheme, parts.netloc.lower())
        self.per_page = per_page
        self._sleep = sleep
        self._clock = clock
        self._progress = progress
        self._limiter = SlidingWindowRateLimiter(
            max_requests_per_minute, RATE_WINDOW_SECONDS, clock=clock, sleep=sleep
        )
        # Both spellings of the secret: as typed, and as it travels in the Authorization header.
        self._secrets = [
            api_key,
            base64.b64encode(f"{api_key}:".encode()).decode("ascii"),
        ]
        self._session = session or requests.Session()
        self._session.auth = (api_key, "")
        self._session.headers.update({"Accept": "application/json", "User-Agent": user_agent})

    def close(self) -> None:
        self._session.close()

    # -- public

    def run(
        self,
        out_dir: Path,
        *,
        resources: Sequence[str] | None = None,
        restart: bool = False,
    ) -> dict[str, int]:
        wanted = self._check_resources(resources)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_path = out_dir / STATE_FILE_NAME
        state = self._prepare_state(out_dir, state_path, wanted, restart=restart)
        counts: dict[str, int] = {}
        for resource in wanted:
            counts[resource] = self._extract_resource(out_dir, state_path, state, resource)
        return counts

    # -- setup

    @staticmethod
    def _check_resources(resources: Sequence[str] | None) -> list[str]:
        """Folder names of the endpoints to pull (`patients/archived` or its folder name
        `patients_archived`); all of them by default."""
        if resources is None:
            return list(RESOURCES)
        folders = [name.strip("/").replace("/", "_") for name in resources]
        unknown = [name for name, f in zip(resources, folders, strict=True) if f not in RESOURCES]
        if unknown:
            raise ExtractError(
                f"unknown Cliniko resource(s) {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(e.path for e in ALL_ENDPOINTS)}"
            )
        # Keep the caller's order, drop repeats.
        return list(dict.fromkeys(folders))

    def _prepare_state(
        self, out_dir: Path, state_path: Path, wanted: list[str], *, restart: bool
    ) -> ExtractState:
        try:
            state = ExtractState.load(state_path)
        except ExtractError:
            if not restart or set(wanted) != set(RESOURCES):
                raise
            state = None  # a full restart replaces a state it cannot read
        if state is not None and state.base_url != self.base_url:
            if not restart:
                raise ExtractError(
                    f"{out_dir} holds an extract from {state.base_url}, not {self.base_url}; "
                    "use another output folder or re-run with --restart to replace it"
                )
            if set(wanted) != set(RESOURCES):
                # The other endpoints' pages would stay, from the other account.
                raise ExtractError(
                    f"{out_dir} holds an extract from {state.base_url}; a restart against "
                    f"{self.base_url} must pull every endpoint, not only "
                    f"{', '.join(wanted)} (or use another output folder)"
                )
            state = None
        if state is None:
            state = ExtractState(base_url=self.base_url)
        for resource in wanted:
            folder = out_dir / resource
            if restart:
                state.resources.pop(resource, None)
                remove_pages(folder)
                continue
            entry = state.resources.get(resource)
            if entry is None:
                if saved_page_numbers(folder):
                    raise ExtractError(
                        f"{folder} already holds page files that {state_path.name} does not "
                        "record (from another run?); use an empty output folder or re-run "
                        "with --restart to replace them"
                    )
            else:
                # Pages written after the last state save (a crash between the two renames)
                # are fetched again; drop them so the folder matches the state exactly.
                remove_pages(folder, above=entry.pages_saved)
        state.save(state_path)
        return state

    # -- per resource

    def _extract_resource(
        self, out_dir: Path, state_path: Path, state: ExtractState, resource: str
    ) -> int:
        ep = ENDPOINTS_BY_FOLDER[resource]
        folder = out_dir / resource
        entry = state.resources.get(resource)
        if entry is not None and entry.unavailable:
            self._report(f"{resource}: not offered by this account, skipped")
            return 0
        if entry is not None and entry.complete:
            problem = self._check(folder, ep)
            if problem is None:
                self._report(
                    f"{resource}: already complete ({_pages(entry.pages_saved)}, "
                    f"{entry.records} records), skipped"
                )
                return entry.records
            self._report(f"{resource}: the saved pages no longer add up ({problem}); "
                         "pulling it again")  # fmt: skip
            entry = None
        problem = ""
        for pull in range(1, MAX_PULLS + 1):
            if entry is None or pull > 1:
                remove_pages(folder)
                entry = ResourceState(next_url=self._first_page_url(ep))
                state.resources[resource] = entry
                state.save(state_path)
            elif entry.pages_saved:
                self._report(f"{resource}: resuming after page {entry.pages_saved}")
            folder.mkdir(parents=True, exist_ok=True)
            try:
                self._pull_pages(folder, state_path, state, entry, ep, resource)
            except PullChanged as changed:
                problem = str(changed)
            except EndpointUnavailable:
                # Cliniko answered 404 for the first page of a variant endpoint: this account
                # does not offer it, so it has no records to pull.
                entry.unavailable, entry.complete, entry.next_url = True, True, None
                state.save(state_path)
                remove_pages(folder)
                with contextlib.suppress(OSError):
                    folder.rmdir()
                message = f"{resource}: not offered by this account (HTTP 404), skipped"
                logger.warning(message)
                self._report(message)
                return 0
            else:
                problem = self._check(folder, ep) or ""
            if not problem:
                entry.complete = True
                state.save(state_path)
                self._report(
                    f"{resource}: done, {_pages(entry.pages_saved)}, {entry.records} records"
                )
                return entry.records
            if pull < MAX_PULLS:
                message = f"{resource}: the pull does not add up ({problem}); pulling it again"
                logger.warning(message)
                self._report(message)
        # Start over next time; the pages stay, and ingest refuses them as incomplete.
        state.resources[resource] = ResourceState(next_url=self._first_page_url(ep))
        state.save(state_path)
        raise ExtractError(
            f"{resource}: the pull does not add up after {MAX_PULLS} tries: {problem}. Records "
            "may be changing in Cliniko while they are pulled; run the extract again (best "
            "when the clinic is closed). The incomplete pages are kept for inspection and "
            "ingest refuses them."
        )

    @staticmethod
    def _check(folder: Path, ep: Endpoint) -> str | None:
        """Why the saved pages are not a whole pull of the endpoint, or None."""
        try:
            return check_complete(folder, ep.resource)
        except ExtractFileError as err:
            return str(err)

    def _first_page_url(self, ep: Endpoint) -> str:
        return f"{self.base_url}/{ep.path}?per_page={self.per_page}&page=1"

    def _pull_pages(
        self, folder: Path, state_path: Path, state: ExtractState, entry: ResourceState,
        ep: Endpoint, resource: str,
    ) -> None:  # fmt: skip
        fetched: set[str] = set()
        biggest = 0  # the most records a page of this pull held
        while entry.next_url is not None:
            page_number = entry.pages_saved + 1
            url = entry.next_url
            if url in fetched:
                raise PullChanged(f"links.next of page {page_number - 1} leads back to a page "
                                  "already pulled")  # fmt: skip
            fetched.add(url)
            body = self._fetch(url, resource, page_number, first=entry.pages_saved == 0,
                               variant=bool(ep.variant))  # fmt: skip
            records, next_url, total = self._parse_page(
                body, ep.resource, resource, page_number, url
            )
            biggest = max(biggest, records)
            if total is not None and next_url is not None and (
                page_number >= math.ceil(max(total, 0) / max(biggest, 1)) + 2
            ):
                # Cliniko said how many there are; a chain that goes on past the pages they
                # fill would never end.
                raise PullChanged(
                    f"the pages go on past the {total:,} records total_entries gives"
                )
            write_atomic(folder / page_file_name(page_number), body)
            entry.pages_saved = page_number
            entry.records += records
            entry.next_url = next_url
            state.save(state_path)
            self._report(f"{resource}: page {page_number} saved ({entry.records} records so far)")

    def _parse_page(
        self, body: bytes, key: str, resource: str, page_number: int, url: str
    ) -> tuple[int, str | None, int | None]:
        where = f"{resource} page {page_number}"
        try:
            payload = json.loads(body)
        except ValueError:
            raise ExtractError(f"{where}: the response is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get(key), list):
            raise ExtractError(
                f"{where}: the response has no {key!r} list; check that "
                f"{self.base_url} is a Cliniko API v1 base URL"
            )
        total = _whole_number(payload.get("total_entries"))
        links = payload.get("links")
        next_url = links.get("next") if isinstance(links, dict) else None
        if next_url in (None, ""):
            return len(payload[key]), None, total
        if not isinstance(next_url, str):
            raise ExtractError(f"{where}: links.next is not a URL")
        parts = urlsplit(next_url)
        # The API key goes with every request, so never follow a link to another host (or
        # one that carries credentials of its own).
        if (parts.scheme, parts.netloc.lower()) != self._origin or parts.username:
            host = parts.hostname or "?"
            raise ExtractError(self._redact(
                f"{where}: links.next points to {parts.scheme}://{host}, not to "
                f"{self._origin[0]}://{self._origin[1]}; refusing to send the API key there"
            ))  # fmt: skip
        if next_url == url:
            raise ExtractError(f"{where}: links.next points back to the same page")
        return len(payload[key]), next_url, total

    # -- HTTP

    def _fetch(
        self, url: str, resource: str, page_number: int, *, first: bool = False,
        variant: bool = False,
    ) -> bytes:  # fmt: skip
        """GET one page: waits for the rate limiter, honours 429, retries transient errors."""
        where = f"{resource} page {page_number}"
        failures = 0
        rate_limited = 0
        while True:
            self._limiter.acquire()
            failed: str | None = None
            try:
                # No redirects: Cliniko answers pages directly, and a redirect could carry
                # the request (and its key) elsewhere.
                response = self._session.get(url, timeout=REQUEST_TIMEOUT, allow_redirects=False)
            except _TRANSIENT_ERRORS as exc:
                problem: str | None = f"connection failed ({type(exc).__name__})"
            except requests.RequestException as exc:
                problem, failed = None, f"the request failed ({type(exc).__name__})"
            else:
                problem = None
            if failed is not None:
                raise ExtractError(self._redact(f"{where}: {failed}"))
            if problem is not None:
                # Handled outside the except block so a final ExtractError does not drag the
                # request (and its Authorization header) along as its context.
                failures += 1
                self._backoff_or_fail(where, problem, failures)
                continue
            status = response.status_code
            if 200 <= status < 300:
                try:
                    return response.content
                except requests.RequestException as exc:  # a body that cannot be decoded
                    failures += 1
                    self._backoff_or_fail(where, f"unreadable body ({type(exc).__name__})",
                                          failures)  # fmt: skip
                    continue
            if 300 <= status < 400:
                raise ExtractError(self._redact(
                    f"{where}: Cliniko answered HTTP {status} (a redirect to "
                    f"{urlsplit(response.headers.get('Location', '')).hostname or '?'}); check "
                    f"CLINIKO_API_BASE_URL ({self.base_url}) and any proxy in between"
                ))  # fmt: skip
            if status == 429:
                rate_limited += 1
                if rate_limited > MAX_RATE_LIMITED_RETRIES:
                    raise ExtractError(
                        f"{where}: still rate limited (HTTP 429) after "
                        f"{MAX_RATE_LIMITED_RETRIES} waits; another client may be using the "
                        "same API key, try again later"
                    )
                wait = self._rate_limit_wait(response)
                message = f"{where}: rate limited by Cliniko (HTTP 429), waiting {wait:g} s"
                logger.warning(message)
                self._report(message)
                self._sleep(wait)
                continue
            if status >= 500:
                failures += 1
                self._backoff_or_fail(where, f"HTTP {status}", failures)
                continue
            if status == 404 and first and variant:
                raise EndpointUnavailable()
            if status == 404 and page_number > 1:
                # The endpoint exists (page 1 was served): the page the last one linked to
                # is gone, so records changed under the pull.
                raise PullChanged(
                    f"page {page_number}, which page {page_number - 1} linked to, is not found "
                    "(HTTP 404)"
                )
            raise ExtractError(self._client_error_message(where, url, response))

    def _backoff_or_fail(self, where: str, problem: str, failures: int) -> None:
        if failures >= MAX_ATTEMPTS:
            raise ExtractError(
                self._redact(
                    f"{where}: {problem}, giving up after {MAX_ATTEMPTS} attempts; the pages "
                    "saved so far are kept, re-run the same command to resume"
                )
            )
        delay = min(BACKOFF_BASE_SECONDS * 2 ** (failures - 1), BACKOFF_CAP_SECONDS)
        message = (
            f"{where}: {problem}, retrying in {delay:g} s "
            f"(attempt {failures + 1} of {MAX_ATTEMPTS})"
        )
        logger.warning(self._redact(message))
        self._report(message)
        self._sleep(delay)

    def _rate_limit_wait(self, response: requests.Response) -> float:
        """Seconds to wait after a 429, from X-RateLimit-Reset or Retry-After."""
        wait: float | None = None
        reset = response.headers.get("X-RateLimit-Reset")
        if reset:
            wait = self._seconds_until(reset)
        if wait is None:
            retry_after = response.headers.get("Retry-After")
            if retry_after:
                wait = self._seconds_until(retry_after)
        if wait is None:
            wait = RATE_WINDOW_SECONDS
        return min(max(wait, MIN_RATE_LIMIT_WAIT_SECONDS), MAX_RATE_LIMIT_WAIT_SECONDS)

    def _seconds_until(self, value: str) -> float | None:
        value = value.strip()
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None:
            if not math.isfinite(number):
                return None
            return number - self._clock() if number >= EPOCH_THRESHOLD else number
        try:
            moment = parsedate_to_datetime(value)  # Retry-After may be an HTTP date
        except (TypeError, ValueError):
            return None
        return moment.timestamp() - self._clock()

    def _client_error_message(self, where: str, url: str, response: requests.Response) -> str:
        status = response.status_code
        if status == 401:
            hint = (
                "Cliniko rejected the API key; check CLINIKO_API_KEY (and that its shard "
                "suffix or CLINIKO_SHARD matches the account's region)"
            )
        elif status == 403:
            hint = "the API key's user may not read this resource; use a key of a user with access"
        elif status == 404:
            hint = f"no such endpoint; check CLINIKO_SHARD / CLINIKO_API_BASE_URL ({self.base_url})"
        else:
            hint = "the request was refused"
        detail = ""
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            detail = f" (Cliniko says: {payload['message'][:200]})"
        return self._redact(f"{where}: HTTP {status} from {url}: {hint}{detail}")

    # -- helpers

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _report(self, message: str) -> None:
        if self._progress is not None:
            self._progress(self._redact(message))
