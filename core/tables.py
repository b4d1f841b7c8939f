"""Tables for people: aligned columns with their full names, numbers to the right, no
types or shape lines (what a polars frame prints is for programmers)."""

from __future__ import annotations

import re

import polars as pl

# Control characters (newlines, escape sequences) in a cell would start a fake row or
# drive the terminal: they are shown as escapes instead.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return printable(str(value))


def format_table(frame: pl.DataFrame, max_width: int = 60) -> str:
    """The frame as text: a header line, a rule, one line per row."""
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    rows = [[_cell(v) for v in row] for row in frame.iter_rows()]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in rows]
    widths = [
        max([len(name), *(len(r[i]) for r in cells)]) for i, name in enumerate(frame.columns)
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(frame.columns)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)
