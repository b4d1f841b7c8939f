"""One-click unsubscribe (RFC 8058): a signed, expiring link in every patient email.

Each message carries `List-Unsubscribe: <https://APP/unsubscribe/TOKEN>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`, so a mailbox provider can offer its
own unsubscribe button, and templates can show the same link (`r.unsubscribe_url`). The
token names the patient, the channel and the message's unsubscribe category, is signed
with UNSUBSCRIBE_SECRET (HMAC-SHA256) and expires; it holds no address or name, so a
forwarded link tells nobody anything. The one-click POST opts the patient out of the
category; the page the link opens lets them choose categories, or all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import date, timedelta

# How long a link works after the message is sent: long enough for a reader who finds an
# old message, as mailbox providers expect of the one-click link.
VALID_DAYS = 120


class BadToken(ValueError):
    """Not a link this clinic made (changed, cut short or signed with another secret)."""


class ExpiredToken(ValueError):
    """A link this clinic made, past its date."""


@dataclass(frozen=True)
class Unsubscribe:
    patient_id: str
    channel: str
    expires: date
    # The unsubscribe category of the message; None for links made before categories,
    # which opt out of the channel.
    category: str | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode("ascii"), hashlib.sha256).digest())


def make_token(
    secret: str, patient_id: str, channel: str, sent_on: date, category: str | None = None
) -> str:
    """The token of a message sent on `sent_on`, valid for VALID_DAYS after it."""
    expires = sent_on + timedelta(days=VALID_DAYS)
    fields = {"p": patient_id, "c": channel, "e": expires.isoformat()}
    if category is not None:
        fields["k"] = category
    payload = _b64(json.dumps(fields, separators=(",", ":")).encode())
    return f"{payload}.{_signature(secret, payload)}"


def read_token(secret: str, token: str, today: date) -> Unsubscribe:
    """What a token says, once its signature holds; BadToken or ExpiredToken otherwise."""
    payload, _, signature = token.partition(".")
    if not payload or not signature or len(token) > 1_000:
        raise BadToken("not an unsubscribe link")
    try:
        expected = _signature(secret, payload)
    except UnicodeEncodeError:
        raise BadToken("not an unsubscribe link") from None
    if not hmac.compare_digest(expected, signature):
        raise BadToken("not an unsubscribe link")
    try:
        fields = json.loads(_unb64(payload))
        found = Unsubscribe(str(fields["p"]), str(fields["c"]), date.fromisoformat(fields["e"]),
                            str(fields["k"]) if "k" in fields else None)  # fmt: skip
    except (ValueError, KeyError, TypeError):
        raise BadToken("not an unsubscribe link") from None
    if found.expires < today:
        raise ExpiredToken(f"the link expired on {found.expires}")
    return found


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/unsubscribe/{token}"


def headers_for(url: str) -> dict[str, str]:
    """The RFC 8058 headers of one message."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
