"""Relative dates: calendar steps clamped to the month's end, and what is not a date."""

from __future__ import annotations

from datetime import date

import pytest

from segments.dates import BadDate, resolve_date


@pytest.mark.parametrize(
    ("value", "as_of", "expected"),
    [
        ("today", date(2024, 8, 31), date(2024, 8, 31)),
        ("-6 months", date(2024, 8, 31), date(2024, 2, 29)),  # leap year: 29 Feb
        ("-6 months", date(2023, 8, 31), date(2023, 2, 28)),  # common year: 28 Feb
        ("-1 month", date(2024, 3, 31), date(2024, 2, 29)),
        ("+1 month", date(2024, 1, 31), date(2024, 2, 29)),
        ("-1 year", date(2024, 2, 29), date(2023, 2, 28)),
        ("+4 years", date(2024, 2, 29), date(2028, 2, 29)),
        ("-12 months", date(2024, 1, 15), date(2023, 1, 15)),  # across the year boundary
        ("+13 months", date(2024, 12, 31), date(2026, 1, 31)),
        ("+7 days", date(2024, 12, 28), date(2025, 1, 4)),
        ("-2 weeks", date(2024, 3, 1), date(2024, 2, 16)),
        ("-1 day", date(2024, 3, 1), date(2024, 2, 29)),
        (" + 3 Days ", date(2024, 3, 1), date(2024, 3, 4)),  # spacing and case forgiven
        ("2024-03-31", date(2020, 1, 1), date(2024, 3, 31)),
        (date(2024, 3, 31), date(2020, 1, 1), date(2024, 3, 31)),
    ],
)
def test_resolve(value, as_of: date, expected: date) -> None:
    assert resolve_date(value, as_of) == expected


@pytest.mark.parametrize(
    "value", ["yesterday", "-6", "6 months", "-6 monts", "2024-02-30", "", 30, None, "--1 day"]
)
def test_not_a_date(value) -> None:
    with pytest.raises(BadDate, match="not a date"):
        resolve_date(value, date(2024, 1, 1))
