"""Channels deliver a batch of messages. Email goes through SendGrid's v3 mail/send.

A channel sends one request per batch and reports the batch's outcome; the ledger
bookkeeping around it lives in `outbound.sending`. SMS can follow as another `Channel`.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import json
import logging
import time as time_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.error import URLError

import sendgrid
from python_http_client.exceptions import HTTPError

from outbound.campaigns import MAX_PERSONALIZATIONS

log = logging.getLogger(__name__)
# The HTTP library logs request payloads and headers (addresses, the API key) at DEBUG.
logging.getLogger("python_http_client.client").setLevel(logging.INFO)

DEFAULT_SENDGRID_HOST = "https://api.sendgrid.com"


@dataclass(frozen=True)
class Recipient:
    """One personalization: the ledger row it belongs to, the address, template data."""

    ledger_id: str
    address: str
    data: dict[str, str] = field(default_factory=dict)
    # Headers of this message alone (the one-click unsubscribe link).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Content:
    """What every message of a batch shares: a dynamic template, or rendered parts.

    Rendered parts carry substitution tags (`-first_name-`) that SendGrid fills per
    personalization, so one request serves up to 1000 different recipients.
    """

    template_id: str | None = None
    subject: str | None = None
    html: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class BatchOutcome:
    ok: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None
    provider_message_id: str | None = None
    # The provider provably did not take the batch (never reached, or rate-limited): a
    # later run may try it again. False for everything the provider answered.
    retryable: bool = False


class DeliveryUnknown(RuntimeError):
    """The request may or may not have reached the provider (connection lost after the
    request was sent, no answer in time, an answer cut short).

    The run stops; the batch's ledger rows stay `pending` and are reported as `unknown`
    by the next run instead of being sent again.
    """


class NotSent(Exception):  # noqa: N818 - it says what happened to the batch
    """The run was stopped (SIGTERM, Ctrl-C, a Dagster run being terminated) while waiting
    to try the batch again: no request was in flight, so nothing was sent. `cause` is what
    stopped it, to be raised on once the batch is recorded as failed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("stopped while waiting to retry; no request was in flight")
        self.cause = cause


def check_api_host(host: str, setting: str = "SENDGRID_API_HOST") -> str:
    """A provider base URL as the client needs it: http(s)://host[:port], no path."""
    from urllib.parse import urlsplit

    parts = urlsplit(host.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{setting}={host!r} is not a URL; write it with its scheme, e.g. "
            "https://api.sendgrid.com (or http://127.0.0.1:8025 for a local stand-in)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{setting}={host!r} must be only scheme, host and port (no path)")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number 0-65535
    except ValueError:
        raise ValueError(f"{setting}={host!r} has a port that is not a number") from None
    if not parts.hostname:
        raise ValueError(f"{setting}={host!r} names no host")
    return f"{parts.scheme}://{parts.netloc}"


class Channel(Protocol):
    name: str

    def send_batch(
        self,
        recipients: list[Recipient],
        content: Content,
        categories: list[str],
        custom_args: dict[str, str],
    ) -> BatchOutcome: ...


def substitution_tag(name: str) -> str:
    return f"-{name}-"


def _sendgrid_error_text(body: bytes | str | None) -> str:
    """SendGrid's `errors[].message` (+ field), or the raw body when it is not that JSON."""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        errors = json.loads(raw).get("errors", [])
        parts = [
            f"{e.get('message', '')}" + (f" (field {e['field']})" if e.get("field") else "")
            for e in errors
        ]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError):
        pass
    return raw[:500]


@dataclass
class SendGridEmail:
    """Email through the real `sendgrid` client; `host` may point at a local stand-in."""

    api_key: str
    from_email: str
    from_name: str | None = None
    host: str = DEFAULT_SENDGRID_HOST
    sandbox: bool = False
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 120.0
    timeout: float = 30.0
    sleep: Callable[[float], None] = time_mod.sleep
    clock: Callable[[], float] = time_mod.time
    name: str = "email"

    def __post_init__(self) -> None:
        self.host = check_api_host(self.host)
        self.client = sendgrid.SendGridAPIClient(api_key=self.api_key, host=self.host)
        # The client passes its own timeout to every request it builds.
        self.client.client.timeout = self.timeout

    def request_body(
        self,
        recipients: list[Recipient],
        content: Content,
        categories: list[str],
        custom_args: dict[str, str],
    ) -> dict:
        if not 1 <= len(recipients) <= MAX_PERSONALIZATIONS:
            raise ValueError(
                f"a SendGrid request holds 1..{MAX_PERSONALIZATIONS} personalizations, "
                f"got {len(recipients)}"
            )
        personalizations = []
        for r in recipients:
            p: dict = {"to": [{"email": r.address}], "custom_args": {"ledger_id": r.ledger_id}}
            if r.headers:
                p["headers"] = dict(r.headers)
            if content.template_id:
                p["dynamic_template_data"] = r.data
            elif r.data:
                # Substituted into the HTML part too, so markup characters are escaped;
                # apostrophes (O'Brien) are harmless in text and stay readable.
                p["substitutions"] = {
                    substitution_tag(k): html.escape(v, quote=False) for k, v in r.data.items()
                }
            personalizations.append(p)
        body: dict = {
            "from": {
                "email": self.from_email,
                **({"name": self.from_name} if self.from_name else {}),
            },
            "personalizations": personalizations,
            "categories": categories[:10],
            "custom_args": custom_args,
            "mail_settings": {"sandbox_mode": {"enable": self.sandbox}},
        }
        if content.template_id:
            body["template_id"] = content.template_id
        else:
            body["subject"] = content.subject
            body["content"] = [
                {"type": "text/plain", "value": content.text},
                {"type": "text/html", "value": content.html},
            ]
        return body

    def _wait(self, seconds: float) -> None:
        """Wait before trying again; a stop meanwhile leaves nothing in flight."""
        try:
            self.sleep(seconds)
        except BaseException as stop:  # KeyboardInterrupt, SystemExit, a terminated run
            raise NotSent(stop) from stop

    def _retry_delay(self, attempt: int, headers) -> float:
        delay = self.base_delay * 2 ** (attempt - 1)
        reset = headers.get("X-RateLimit-Reset") if headers is not None else None
        if reset:
            # SendGrid sends the epoch second at which the rate limit resets.
            with contextlib.suppress(ValueError):
                delay = max(delay, float(reset) - self.clock())
        return min(delay, self.max_delay)

    def send_batch(
        self,
        recipients: list[Recipient],
        content: Content,
        categories: list[str],
        custom_args: dict[str, str],
    ) -> BatchOutcome:
        """One request for the batch, retried while the outcome is known to be "not taken".

        - 2xx: sent. 4xx (but 429): failed, as the provider said (not retried).
        - 429 and 503: retried with backoff (honouring X-RateLimit-Reset); exhausted, they
          are retryable by a later run (rate-limited or unavailable means not taken).
        - Any other 5xx (500, 502, 504, ...): the request reached the provider, which may
          have acted on it before failing: DeliveryUnknown, never retried.
        - No connection (refused, unreachable, name not found, TLS failed, the request not
          fully written): retried; exhausted, it is `failed` and retryable: nothing left.
        - Anything after the request was sent (reset, timeout, a cut-short answer):
          DeliveryUnknown, never retried.
        """
        body = self.request_body(recipients, content, categories, custom_args)
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            try:
                response = self.client.send(body)
            except HTTPError as e:
                code = int(e.status_code)
                if code >= 500 and code != 503:
                    raise DeliveryUnknown(
                        f"SendGrid answered HTTP {code}: it may have acted on the request "
                        "before failing, so it is not sent again"
                    ) from None
                retryable = code in (429, 503)
                if retryable and not last:
                    delay = self._retry_delay(attempt, e.headers)
                    log.warning(
                        "SendGrid answered %s (attempt %d/%d, %d messages); retrying in %.1fs",
                        code,
                        attempt,
                        self.max_attempts,
                        len(recipients),
                        delay,
                    )
                    self._wait(delay)
                    continue
                text = _sendgrid_error_text(e.body)
                if retryable:
                    text = f"gave up after {attempt} attempts: {text}"
                return BatchOutcome(
                    False, attempt, code, f"HTTP {code}: {text}", retryable=retryable
                )
            except URLError as e:
                # urllib raises URLError only while connecting or writing the request: the
                # provider never received a whole request, so nothing was sent.
                reason = e.reason if isinstance(e.reason, str) else type(e.reason).__name__
                if not last:
                    log.warning(
                        "could not reach SendGrid (%s; attempt %d/%d); retrying",
                        reason, attempt, self.max_attempts,
                    )  # fmt: skip
                    self._wait(self._retry_delay(attempt, None))
                    continue
                return BatchOutcome(
                    False, attempt, None,
                    f"could not reach SendGrid after {attempt} attempts ({reason}); nothing "
                    "was sent, a later run tries again",
                    retryable=True,
                )  # fmt: skip
            except http.client.InvalidURL as e:
                # Refused while building the request: nothing was sent.
                return BatchOutcome(False, attempt, None, f"invalid SendGrid URL: {e}")
            except (TimeoutError, http.client.HTTPException, ConnectionError, OSError) as e:
                raise DeliveryUnknown(
                    f"connection lost after the request was sent: {type(e).__name__}"
                ) from None
            # mail/send answers 202 (200 as well in sandbox mode).
            if response.status_code not in ({200, 202} if self.sandbox else {202}):
                # Any other 2xx is not SendGrid's answer: a redirect followed to a login
                # page, a proxy. Not sent, and not retried until someone looks.
                return BatchOutcome(
                    False, attempt, response.status_code,
                    f"unexpected answer HTTP {response.status_code} (SendGrid answers 202): "
                    "the request did not reach SendGrid's mail/send; check SENDGRID_API_HOST "
                    "and any proxy in between",
                )  # fmt: skip
            return BatchOutcome(
                True,
                attempt,
                response.status_code,
                provider_message_id=response.headers.get("X-Message-Id"),
            )
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
