"""Every setting of the product, in one value built from the environment.

Only the top of the system (the `audiences` CLI and the Dagster code location) reads the
process environment: it calls `Settings.from_environ(os.environ)` once and hands the
parts down as plain values. Everything below takes those values as arguments. The
variables and their defaults are listed in docs/configuration.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core.days import SettingsError, validate_timezone

__all__ = ["Settings", "SettingsError", "ClinikoAccess", "SenderAccess", "TwilioAccess"]

DEFAULT_DUCKDB_PATH = "var/warehouse.duckdb"
DEFAULT_STATE_DB_URL = "sqlite:///var/state.db"
DEFAULT_EXTRACTS_ROOT = "var/extracts"
DEFAULT_SENDGRID_HOST = "https://api.sendgrid.com"
DEFAULT_TWILIO_BASE_URL = "https://api.twilio.com"
DEFAULT_MAX_DROP = 0.5


@dataclass(frozen=True)
class SenderAccess:
    """How email is sent: SendGrid's key and host and the clinic's sender. The key is
    only ever in the environment, never in a file or a log (it is left out of repr)."""

    api_key: str | None = field(default=None, repr=False)
    host: str = DEFAULT_SENDGRID_HOST
    from_email: str | None = None
    from_name: str | None = None
    sandbox: bool = False
    # OUTBOUND_SEND_DISABLED (demos, staging copies of production data): a dry run even
    # with a key in the environment.
    disabled: bool = False
    # SENDGRID_WEBHOOK_PUBLIC_KEY: the Event Webhook's verification key (base64, as
    # SendGrid shows it); without it the web app takes no events.
    webhook_public_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TwilioAccess:
    """How SMS is sent: Twilio's account and sender. The auth token is only ever in the
    environment (left out of repr); `base_url` only points the client at a stand-in."""

    account_sid: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    messaging_service_sid: str | None = None
    from_number: str | None = None
    base_url: str = DEFAULT_TWILIO_BASE_URL
    disabled: bool = False
    # The WhatsApp sender (E.164); without it WhatsApp campaigns are not sent.
    whatsapp_from: str | None = None


@dataclass(frozen=True)
class ClinikoAccess:
    """The Cliniko API key and where to reach the API (empty values: not configured)."""

    api_key: str = field(default="", repr=False)
    shard: str = ""
    base_url: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class Settings:
    duckdb_path: Path = Path(DEFAULT_DUCKDB_PATH)
    state_db_url: str = DEFAULT_STATE_DB_URL
    clinic_timezone: str = "UTC"
    extracts_root: Path = Path(DEFAULT_EXTRACTS_ROOT)
    segments_path: Path | None = None
    duckdb_memory_limit: str | None = None
    worklists_path: Path | None = None
    campaigns_path: Path | None = None
    ingest_max_drop: float = DEFAULT_MAX_DROP
    cap_max_messages: int = 1
    cap_window_days: int = 7
    # HH:MM clinic time a plan is made at (reproducible dry runs); None: the real time.
    outbound_run_time: str | None = None
    sender: SenderAccess = field(default_factory=SenderAccess)
    twilio: TwilioAccess = field(default_factory=TwilioAccess)
    cliniko: ClinikoAccess = field(default_factory=ClinikoAccess)
    # How patients know the clinic (every commercial SMS names it); the country national
    # phone numbers are read in and whose hours commercial SMS keeps; those hours, when
    # the clinic sets its own (HH:MM-HH:MM).
    clinic_name: str | None = None
    clinic_country: str = "AU"
    recipient_hours: str | None = None
    # Unsubscribe category → SendGrid suppression group: `reactivation=1234,billing=5678`.
    sendgrid_group_ids: str | None = None
    # A campaign pauses itself when spam reports pass this share of its messages (30 days).
    complaint_rate: float = 0.001
    # A third-party task system's incoming webhook, and the secret tasks are signed with.
    tasks_webhook_url: str | None = None
    tasks_webhook_secret: str | None = field(default=None, repr=False)
    # Where patients reach the web app (its unsubscribe links), and the secret those
    # links are signed with; without both, emails carry no unsubscribe link.
    web_app_url: str | None = None
    unsubscribe_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings the variables in `environ` describe; a wrong one is a
        SettingsError naming the variable and how to fix it."""

        def get(name: str) -> str | None:
            value = (environ.get(name) or "").strip()
            return value or None

        tz = get("CLINIC_TIMEZONE") or "UTC"
        validate_timezone(tz)
        duckdb_path = Path(get("DUCKDB_PATH") or DEFAULT_DUCKDB_PATH)
        if duckdb_path.is_dir():
            raise SettingsError(
                f"DUCKDB_PATH {duckdb_path} is a folder; point it at the warehouse file, e.g. "
                f"{duckdb_path / 'warehouse.duckdb'}"
            )
        memory_limit = get("DUCKDB_MEMORY_LIMIT")
        validate_memory_limit(memory_limit)
        state_db_url = get("STATE_DB_URL") or DEFAULT_STATE_DB_URL
        validate_state_db_url(state_db_url)
        return cls(
            duckdb_path=duckdb_path,
            state_db_url=state_db_url,
            clinic_timezone=tz,
            extracts_root=Path(get("EXTRACTS_ROOT") or DEFAULT_EXTRACTS_ROOT),
            segments_path=_path(get("SEGMENTS_PATH")),
            duckdb_memory_limit=memory_limit,
            worklists_path=_path(get("WORKLISTS_PATH")),
            campaigns_path=_path(get("CAMPAIGNS_PATH")),
            ingest_max_drop=_fraction("INGEST_MAX_DROP", get("INGEST_MAX_DROP")),
            cap_max_messages=_whole(
                "OUTBOUND_CAP_MAX_MESSAGES", get("OUTBOUND_CAP_MAX_MESSAGES"), 1
            ),
            cap_window_days=_whole("OUTBOUND_CAP_WINDOW_DAYS", get("OUTBOUND_CAP_WINDOW_DAYS"), 7),
            outbound_run_time=get("OUTBOUND_RUN_TIME"),
            sender=SenderAccess(
                api_key=get("SENDGRID_API_KEY"),
                host=get("SENDGRID_API_HOST") or DEFAULT_SENDGRID_HOST,
                from_email=get("OUTBOUND_FROM_EMAIL"),
                from_name=get("OUTBOUND_FROM_NAME"),
                sandbox=_flag(get("SENDGRID_SANDBOX_MODE")),
                disabled=_flag(get("OUTBOUND_SEND_DISABLED")),
                webhook_public_key=_public_key(get("SENDGRID_WEBHOOK_PUBLIC_KEY")),
            ),
            twilio=TwilioAccess(
                account_sid=get("TWILIO_ACCOUNT_SID"),
                auth_token=get("TWILIO_AUTH_TOKEN"),
                messaging_service_sid=get("TWILIO_MESSAGING_SERVICE_SID"),
                from_number=get("TWILIO_FROM_NUMBER"),
                base_url=get("TWILIO_API_BASE_URL") or DEFAULT_TWILIO_BASE_URL,
                disabled=_flag(get("OUTBOUND_SEND_DISABLED")),
                whatsapp_from=get("TWILIO_WHATSAPP_FROM"),
            ),
            clinic_name=get("CLINIC_NAME"),
            clinic_country=_country(get("CLINIC_COUNTRY")),
            recipient_hours=get("OUTBOUND_RECIPIENT_HOURS"),
            sendgrid_group_ids=get("SENDGRID_GROUP_IDS"),
            complaint_rate=_rate("OUTBOUND_COMPLAINT_RATE", get("OUTBOUND_COMPLAINT_RATE")),
            tasks_webhook_url=_webhook_url(get("TASKS_WEBHOOK_URL")),
            tasks_webhook_secret=_secret(get("TASKS_WEBHOOK_SECRET"), "TASKS_WEBHOOK_SECRET"),
            web_app_url=_web_app_url(get("WEB_APP_URL")),
            unsubscribe_secret=_secret(get("UNSUBSCRIBE_SECRET")),
            cliniko=ClinikoAccess(
                api_key=get("CLINIKO_API_KEY") or "",
                shard=get("CLINIKO_SHARD") or "",
                base_url=get("CLINIKO_API_BASE_URL") or "",
                user_agent=get("CLINIKO_USER_AGENT") or "",
            ),
        )


def _web_app_url(value: str | None) -> str | None:
    from urllib.parse import urlsplit

    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or \
            parts.fragment:  # fmt: skip
        raise SettingsError(
            f"WEB_APP_URL={value!r} is not the web app's address; write it as patients reach "
            "it, e.g. https://audiences.clinic.example"
        )
    return value.rstrip("/")


def _secret(value: str | None, name: str = "UNSUBSCRIBE_SECRET") -> str | None:
    if value is not None and len(value) < 32:
        raise SettingsError(
            f"{name} is shorter than 32 characters; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return value


def _webhook_url(value: str | None) -> str | None:
    from urllib.parse import urlsplit

    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"TASKS_WEBHOOK_URL={value!r} is not a URL; write the task "
                            "system's webhook address, e.g. https://tasks.example/hooks/1")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SettingsError("TASKS_WEBHOOK_URL must be https:// (tasks carry patient and "
                            "case ids); plain http is only for a receiver on this machine")
    return value


def _public_key(value: str | None) -> str | None:
    """A base64 public key, or a SettingsError saying how it is written."""
    import base64
    import binascii

    if value is None:
        return None
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is not base64; copy the verification key from "
            "SendGrid's Mail Settings > Event Webhook > Signature Verification"
        ) from None
    return value


def _country(value: str | None) -> str:
    from core.countries import COUNTRIES

    code = (value or "AU").upper()
    if code not in COUNTRIES:
        raise SettingsError(
            f"CLINIC_COUNTRY={value!r} is not a country this knows; use one of "
            f"{', '.join(sorted(COUNTRIES))} (ISO 3166 codes)"
        )
    return code


def _rate(name: str, value: str | None) -> float:
    if value is None:
        return 0.001
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        raise SettingsError(f"{name}={value!r} is not a share above 0 and at most 1, e.g. 0.001")
    return number


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


def _whole(name: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a whole number") from None


def _fraction(name: str, value: str | None) -> float:
    if value is None:
        return DEFAULT_MAX_DROP
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < 1:
        raise SettingsError(
            f"{name}={value!r} is not a fraction from 0 up to (not including) 1, e.g. 0.5"
        )
    return number


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KIB|MB|MIB|GB|GIB|TB|TIB)\s*$", re.IGNORECASE)
_UNIT = {"B": 1, "KB": 10**3, "KIB": 2**10, "MB": 10**6, "MIB": 2**20, "GB": 10**9,
         "GIB": 2**30, "TB": 10**12, "TIB": 2**40}  # fmt: skip
# Below this DuckDB cannot load even a small clinic's marts.
MIN_MEMORY = 100 * 10**6


def validate_memory_limit(value: str | None) -> None:
    match = _MEMORY.match(value) if value else None
    if value and not match:
        raise SettingsError(
            f"DUCKDB_MEMORY_LIMIT {value!r} is not an amount of memory with its unit; use "
            "e.g. 4GB or 512MB"
        )
    if match and float(match.group(1)) * _UNIT[match.group(2).upper()] < MIN_MEMORY:
        raise SettingsError(
            f"DUCKDB_MEMORY_LIMIT {value!r} is too little to work in; give at least 100MB "
            "(e.g. 4GB)"
        )


def validate_state_db_url(url: str) -> None:
    """The state store is SQLite or PostgreSQL, named by a SQLAlchemy URL."""
    hint = "use sqlite:///path/to/state.db or postgresql://user@host/dbname"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    dialect = scheme.split("+", 1)[0]
    if dialect == "postgres":
        raise SettingsError(f"STATE_DB_URL starts with postgres://; SQLAlchemy needs "
                         f"postgresql:// ({hint})")  # fmt: skip
    if dialect not in ("sqlite", "postgresql") or "://" not in url:
        raise SettingsError(f"STATE_DB_URL is not a SQLite or PostgreSQL URL; {hint}")
