"""Channels deliver a batch of messages: email through SendGrid's v3 mail/send (up to
1000 messages a request), SMS through Twilio's Messages API (one message a request).

A channel sends one request per batch and reports the batch's outcome; the ledger
bookkeeping around it lives in `outbound.run`.
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
    # The SendGrid suppression group of the campaign's unsubscribe category (asm.group_id).
    asm_group_id: int | None = None
    # A WhatsApp template (template_id is its content SID): variable number → the
    # recipient field that fills it.
    variables: dict[str, str] | None = None


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
    # The provider refuses the address because its owner opted out there (Twilio 21610:
    # the number replied STOP): learned as an opt-out.
    opted_out: bool = False


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


def wait_before_retry(sleep: Callable[[float], None], seconds: float) -> None:
    """Wait before trying again; a stop meanwhile leaves nothing in flight (NotSent)."""
    try:
        sleep(seconds)
    except BaseException as stop:  # KeyboardInterrupt, SystemExit, a terminated run
        raise NotSent(stop) from stop


class Channel(Protocol):
    name: str
    # At most this many recipients in one `send_batch`.
    max_batch: int

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
    max_batch: int = MAX_PERSONALIZATIONS

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
        if content.asm_group_id is not None:
            body["asm"] = {"group_id": content.asm_group_id}
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
        wait_before_retry(self.sleep, seconds)

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


# -- SMS through Twilio ---------------------------------------------------------------------

DEFAULT_TWILIO_BASE_URL = "https://api.twilio.com"
# Twilio's error codes: too many requests; the number replied STOP (unsubscribed).
TWILIO_RATE_LIMITED, TWILIO_UNSUBSCRIBED = 20429, 21610
# The Twilio client logs every request's parameters (numbers, texts) at INFO.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)


def _before_request(error: BaseException) -> bool:
    """Whether a `requests` failure happened before the request was written (no
    connection, the name not found, TLS refused): then nothing reached the provider."""
    import requests
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    if isinstance(error, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return True
    if isinstance(error, requests.exceptions.ConnectionError):
        reason = error.args[0] if error.args else None
        reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps it
        return isinstance(reason, NewConnectionError | NameResolutionError)
    return False


@dataclass
class TwilioSms:
    """SMS through the real `twilio` client; `base_url` may point at a local stand-in.

    One message a request (Twilio has no batch send): the run gives it one recipient at a
    time, each with its own ledger row, so every message's outcome is its own.
    """

    account_sid: str
    auth_token: str = field(repr=False)
    messaging_service_sid: str | None = None
    from_number: str | None = None
    base_url: str = DEFAULT_TWILIO_BASE_URL
    # Where Twilio reports delivery (the web app's /webhooks/twilio/status), or None.
    status_callback: str | None = None
    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 120.0
    timeout: float = 30.0
    sleep: Callable[[float], None] = time_mod.sleep
    name: str = "sms"
    max_batch: int = 1

    def __post_init__(self) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        self.base_url = check_api_host(self.base_url, "TWILIO_API_BASE_URL")
        if not (self.messaging_service_sid or self.from_number):
            raise ValueError("set TWILIO_MESSAGING_SERVICE_SID or TWILIO_FROM_NUMBER")
        http = TwilioHttpClient(timeout=self.timeout, pool_connections=True)
        self.client = Client(self.account_sid, self.auth_token, http_client=http)
        # Every Messages request is built on this base (the stand-in in tests).
        self.client.api.base_url = self.base_url

    def _params(self, recipient: Recipient, content: Content) -> dict:
        from outbound.templates import fill

        params: dict = {"to": recipient.address, "body": fill(content.text or "", recipient.data)}
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number
        if self.status_callback:
            params["status_callback"] = self.status_callback
        return params

    def send_batch(
        self,
        recipients: list[Recipient],
        content: Content,
        categories: list[str],
        custom_args: dict[str, str],
    ) -> BatchOutcome:
        """One message, retried while the outcome is known to be "not taken".

        - 2xx with a Message SID: sent. 4xx: failed as Twilio said (21610, the number
          replied STOP: failed and learned as an opt-out), not retried.
        - 429 / error 20429 and 503: retried with backoff; exhausted, retryable by a later
          run (rate-limited or unavailable means not taken).
        - Any other 5xx: Twilio may have queued the message before failing:
          DeliveryUnknown, never retried (a patient is not messaged twice).
        - No connection (refused, name not found, TLS, connect timeout): retried;
          exhausted, failed and retryable. Anything after the request was written (reset,
          read timeout, an answer that is not Twilio's): DeliveryUnknown.
        """
        import requests
        from twilio.base.exceptions import TwilioRestException

        if len(recipients) != 1:
            raise ValueError(f"an SMS request carries one message, got {len(recipients)}")
        params = self._params(recipients[0], content)
        if "body" in params and not params["body"].strip():
            # Every field the template uses is empty for this patient: nothing to send.
            return BatchOutcome(False, 0, None, "the message is empty for this patient (the "
                                "template's fields are empty); nothing was sent")  # fmt: skip
        empty = [k for k, v in json.loads(params.get("content_variables") or "{}").items()
                 if not str(v).strip()]  # fmt: skip
        if empty:
            # WhatsApp refuses a template with an empty variable: not sent, and said why.
            return BatchOutcome(False, 0, None, f"template variable(s) {', '.join(empty)} are "
                                "empty for this patient; nothing was sent")  # fmt: skip
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            delay = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
            try:
                message = self.client.messages.create(**params)
            except TwilioRestException as e:
                code, status = e.code, int(e.status)
                limited = status == 429 or code == TWILIO_RATE_LIMITED
                if status >= 500 and status != 503:
                    raise DeliveryUnknown(
                        f"Twilio answered HTTP {status}: it may have queued the message "
                        "before failing, so it is not sent again"
                    ) from None
                text = f"HTTP {status}" + (f" (Twilio error {code})" if code else "")
                text += f": {(e.msg or '')[:300]}"
                if limited or status == 503:
                    if not last:
                        log.warning("Twilio answered %s (attempt %d/%d); retrying in %.1fs",
                                    status, attempt, self.max_attempts, delay)  # fmt: skip
                        wait_before_retry(self.sleep, delay)
                        continue
                    return BatchOutcome(False, attempt, status,
                                        f"gave up after {attempt} attempts: {text}",
                                        retryable=True)  # fmt: skip
                return BatchOutcome(False, attempt, status, text,
                                    opted_out=code == TWILIO_UNSUBSCRIBED)  # fmt: skip
            except requests.exceptions.RequestException as e:
                if not _before_request(e):
                    raise DeliveryUnknown(
                        f"connection lost after the request was sent: {type(e).__name__}"
                    ) from None
                if not last:
                    log.warning("could not reach Twilio (%s; attempt %d/%d); retrying",
                                type(e).__name__, attempt, self.max_attempts)  # fmt: skip
                    wait_before_retry(self.sleep, delay)
                    continue
                return BatchOutcome(
                    False, attempt, None,
                    f"could not reach Twilio after {attempt} attempts ({type(e).__name__}); "
                    "nothing was sent, a later run tries again",
                    retryable=True,
                )  # fmt: skip
            except ValueError:
                # A 2xx whose body is not Twilio's JSON: something answered, and the
                # message may have gone.
                raise DeliveryUnknown(
                    "an answer that is not Twilio's (check TWILIO_API_BASE_URL and any proxy)"
                ) from None
            sid = getattr(message, "sid", None)
            if not sid:
                raise DeliveryUnknown("Twilio answered without a Message SID")
            return BatchOutcome(True, attempt, 201, provider_message_id=sid)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


@dataclass
class TwilioWhatsApp(TwilioSms):
    """WhatsApp through the same Twilio client: an approved template (content SID) with
    its variables filled per recipient, valid outside the 24-hour session window (a
    campaign always starts the conversation, so it never sends free text). `from_number`
    is the WhatsApp sender (E.164), unless a Messaging Service sends."""

    name: str = "whatsapp"

    def _params(self, recipient: Recipient, content: Content) -> dict:
        if not content.template_id:
            raise ValueError("a WhatsApp message needs an approved template (content SID)")
        filled = {k: recipient.data.get(field, "") or ""
                  for k, field in (content.variables or {}).items()}  # fmt: skip
        params: dict = {"to": f"whatsapp:{recipient.address}", "content_sid": content.template_id,
                        "content_variables": json.dumps(filled)}  # fmt: skip
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = f"whatsapp:{self.from_number}"
        if self.status_callback:
            params["status_callback"] = self.status_callback
        return params
