"""Relative dates of the segment language (docs/segments.md).

A date value is `today`, `-N days|weeks|months|years`, `+N ...` or an ISO date, always
resolved against the as-of date D so that a definition means the same thing on every run
and `--as-of` reproduces an old run exactly.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta

_RELATIVE = re.compile(
    r"^\s*(?P<sign>[+-])\s*(?P<n>\d+)\s*(?P<unit>day|week|month|year)s?\s*$", re.IGNORECASE
)

DATE_VALUE_HELP = (
    "write 'today', a signed offset such as '-6 months', '+7 days', '-2 weeks', '-1 year', "
    "or an ISO date such as '2024-03-31'"
)


class BadDate(ValueError):
    """A date value that is neither relative nor ISO; the message says how to write it."""


# How far a relative date may reach from the as-of date, per unit: 200 years either way,
# far beyond any clinic's history, and always a real calendar date.
MAX_OFFSET = {"day": 73_050, "week": 10_436, "month": 2_400, "year": 200}
_HAS_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}")


def add_months(d: date, months: int) -> date:
    """Calendar month step clamped to the month's last day (31 Aug - 6 months = 28/29 Feb)."""
    index = d.year * 12 + (d.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    last_day = calendar.monthrange(year, month)[1]
    return date(year, month, min(d.day, last_day))


def parse_date_value(value: object) -> tuple[str, int] | date:
    """Check a date value without an as-of date: ('unit', signed n), ('today', 0) or a date.

    Validation calls this so that a bad date is reported before anything runs.
    """
    if isinstance(value, datetime):
        raise BadDate(
            f"{value.isoformat()!r} has a time of day; a date condition compares calendar "
            f"days (in the clinic's time zone), so write the date only, e.g. "
            f"'{value.date().isoformat()}'"
        )
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise BadDate(f"{value!r} is not a date; {DATE_VALUE_HELP}")
    text = value.strip()
    if text.lower() == "today":
        return ("day", 0)
    m = _RELATIVE.match(text)
    if m:
        n, unit = int(m.group("n")), m.group("unit").lower()
        if n > MAX_OFFSET[unit]:
            raise BadDate(
                f"{value!r} reaches too far from the as-of date; offsets go up to "
                f"{MAX_OFFSET[unit]:,} {unit}s (200 years)"
            )
        return (unit, -n if m.group("sign") == "-" else n)
    if _HAS_TIME.match(text):
        raise BadDate(
            f"{value!r} has a time of day; a date condition compares calendar days (in the "
            f"clinic's time zone), so write the date only, e.g. {text[:10]!r}"
        )
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadDate(f"{value!r} is not a date; {DATE_VALUE_HELP}") from None


def resolve_date(value: object, as_of: date) -> date:
    """The calendar date a date value stands for on as-of date `as_of`."""
    parsed = parse_date_value(value)
    if isinstance(parsed, date):
        return parsed
    unit, n = parsed
    if unit == "day":
        return as_of + timedelta(days=n)
    if unit == "week":
        return as_of + timedelta(weeks=n)
    if unit == "month":
        return add_months(as_of, n)
    return add_months(as_of, 12 * n)
