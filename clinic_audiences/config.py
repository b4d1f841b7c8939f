"""Where things live, from the environment (DESIGN.md section 8).

Every part reads its locations through `Settings.from_env()` so that one set of
variables configures the CLI, the Dagster code location and the tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
        return cls(
            duckdb_path=Path(os.environ.get("DUCKDB_PATH") or DEFAULT_DUCKDB_PATH),
            state_db_url=os.environ.get("STATE_DB_URL") or DEFAULT_STATE_DB_URL,
            clinic_timezone=tz,
            extracts_root=Path(os.environ.get("EXTRACTS_ROOT") or DEFAULT_EXTRACTS_ROOT),
            segments_path=Path(segments) if segments else None,
        )


def validate_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"CLINIC_TIMEZONE {name!r} is not an IANA time zone; "
            "use a name such as 'Australia/Sydney' or 'UTC'"
        ) from None


def today_in(timezone: str) -> date:
    """The as-of date when none is given: today in the clinic's time zone."""
    return datetime.now(validate_timezone(timezone)).date()


def parse_as_of(value: str | None, timezone: str) -> date:
    if not value:
        return today_in(timezone)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--as-of {value!r} is not a date; write it as YYYY-MM-DD") from None
