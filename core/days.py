"""The as-of day: the calendar day, in the clinic's time zone, that a run is about.

Every relative condition ("in the last 90 days", "next 7 days") and every mart field is
computed at one as-of day D. A run is for one D; a day is written YYYY-MM-DD and parsed
here only.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class SettingsError(ValueError):
    """A setting is wrong; the message names it and how to fix it."""


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


def parse_day(value: str | date, what: str = "--as-of") -> date:
    """A calendar day written YYYY-MM-DD (nothing else: not 20261201, not 2026-W49-2)."""
    if isinstance(value, datetime):
        raise ValueError(f"{what} {value!r} is a time, not a day; write it as YYYY-MM-DD")
    if isinstance(value, date):
        return value
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and _DAY.match(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise ValueError(f"{what} {value!r} is not a date; write it as YYYY-MM-DD")


def today_in(timezone: str) -> date:
    """The as-of day when none is given: today in the clinic's time zone."""
    return datetime.now(validate_timezone(timezone)).date()


def parse_as_of(value: str | date | None, timezone: str) -> date:
    """The as-of day a user gave (YYYY-MM-DD), or today in the clinic's time zone."""
    if not value:
        return today_in(timezone)
    return parse_day(value)
