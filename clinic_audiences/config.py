"""Where things live, from the environment (DESIGN.md section 8).

Every part reads its locations through `Settings.from_env()` so that one set of
variables configures the CLI, the Dagster code location and the tests.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class SettingsError(ValueError):
    """A setting of the environment is wrong; the message names it and how to fix it."""


DEFAULT_DUCKDB_PATH = "var/warehouse.duckdb"
DEFAULT_STATE_DB_URL = "sqlite:///var/state.db"
DEFAULT_EXTRACTS_ROOT = "var/extracts"


@dataclass(frozen=True)
class Settings:
    duckdb_path: Path
    state_db_url: str
    clinic_timezone: str
    extracts_root: Path
    segments_path: Path | None

    @classmethod
    def from_env(cls) -> Settings:
        tz = os.environ.get("CLINIC_TIMEZONE") or "UTC"
        validate_timezone(tz)
        segments = os.environ.get("SEGMENTS_PATH")
        duckdb_path = Path(os.environ.get("DUCKDB_PATH") or DEFAULT_DUCKDB_PATH)
        if duckdb_path.is_dir():
            raise SettingsError(
                f"DUCKDB_PATH {duckdb_path} is a folder; point it at the warehouse file, e.g. "
                f"{duckdb_path / 'warehouse.duckdb'}"
            )
        validate_memory_limit(os.environ.get("DUCKDB_MEMORY_LIMIT"))
        state_db_url = os.environ.get("STATE_DB_URL") or DEFAULT_STATE_DB_URL
        validate_state_db_url(state_db_url)
        return cls(
            duckdb_path=duckdb_path,
            state_db_url=state_db_url,
            clinic_timezone=tz,
            extracts_root=Path(os.environ.get("EXTRACTS_ROOT") or DEFAULT_EXTRACTS_ROOT),
            segments_path=Path(segments) if segments else None,
        )


_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|KIB|MB|MIB|GB|GIB|TB|TIB)?\s*$", re.IGNORECASE)


def validate_memory_limit(value: str | None) -> None:
    if value and not _MEMORY.match(value):
        raise SettingsError(
            f"DUCKDB_MEMORY_LIMIT {value!r} is not an amount of memory; use e.g. 4GB or 512MB"
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


def validate_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a name that is a folder of the zone database ('America'), not a zone.
        raise SettingsError(
            f"CLINIC_TIMEZONE {name!r} is not an IANA time zone; "
            "use a name such as 'Australia/Sydney' or 'UTC'"
        ) from None


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(value: str, what: str = "--as-of") -> date:
    """A calendar day written YYYY-MM-DD (nothing else: not 20261201, not 2026-W49-2)."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and _DAY.match(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(f"{what} {value!r} is not a date; write it as YYYY-MM-DD")


def today_in(timezone: str) -> date:
    """The as-of date when none is given: today in the clinic's time zone."""
    return datetime.now(validate_timezone(timezone)).date()


def parse_as_of(value: str | None, timezone: str) -> date:
    if not value:
        return today_in(timezone)
    return parse_day(value)
