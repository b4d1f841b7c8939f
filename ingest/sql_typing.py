"""Typing staged text in SQL, for the values whose text has the plain shape.

Most of an extract is written one way: `2024-03-01T09:30:00Z`, `120.50`, `true`. DuckDB
types those far faster than a batch of rows can travel to polars and back, so a staged
CSV file is typed here first, in the one statement that reads the file. This path
is only ever a faster way to the answer `ingest.parse` would give: a value is typed here
only when its text has a shape whose meaning is beyond doubt (a regular expression
admits it first), and every check a row must pass (required, allowed values, bounds,
dates in range) is applied here as well. A row with any other text, or that fails any
check, is not decided here: it goes to the polars path, which types it or rejects it with
its reason exactly as before. So the rows loaded and rejected, and every reason, do not
depend on which path a row took.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ingest.entities import Column, Entity, Kind
from ingest.parse import EARLIEST_DATE, FALSE_WORDS, LATEST_DATE, TRUE_WORDS

# What polars' `str.strip_chars()` trims (Unicode White_Space), so that a value is cleaned
# to the same text on both paths.
WHITESPACE = "".join(
    chr(c)
    for c in (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
              0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
)  # fmt: skip

# The shapes typed here (anchored by regexp_full_match). Anything else takes the polars path.
_DATE = r"\d{4}-\d{2}-\d{2}"
_TIME = r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
_OFFSET = r"(Z|[+-](0\d|1[0-4]):[0-5]\d)"
_TIMESTAMP = _DATE + "[T ]" + _TIME
_INTEGER = r"-?\d{1,18}"
_FLOAT = r"-?\d{1,15}(\.\d{1,15})?"
_MONEY = r"-?\d{1,16}(\.\d{1,2})?"


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def cleaned(column_sql: str) -> str:
    """Surrounding white space trimmed; an empty value is null (as `parse.clean_text`).

    Trimming a set of characters is slow; text that starts and ends with a printable ASCII
    character (nearly all of it) has nothing to trim and skips it.
    """
    c = column_sql
    return (
        f"(case when ascii({c}) between 33 and 126 and ascii(right({c}, 1)) between 33 and 126 "
        f"then {c} else nullif(trim({c}, {sql_text(WHITESPACE)}), '') end)"
    )


def typed_from_raw(column: Column) -> bool:
    """Whether the column's value is typed from its text as read, uncleaned.

    Every shape typed here is printable ASCII from its first character to its last, and a
    choice never starts or ends with white space, so text with white space around it has
    no shape here and its row goes to the polars path, which cleans it first: the answer
    is the one the cleaned text would give, and the cleaning (a fair part of the reading's
    cost) is left to the columns whose value is the text itself.
    """
    return column.kind != Kind.STRING or bool(column.choices)


def _matches(text: str, pattern: str) -> str:
    return f"regexp_full_match({text}, {sql_text(pattern)})"


def typed_value(column: Column, text: str) -> str:
    """The column's typed value from its cleaned text `text`; null where the text does not
    have a plain shape (which sends the row to the polars path, unless the text is null)."""
    kind = column.kind
    if kind == Kind.STRING and not column.choices:
        return text
    if kind == Kind.STRING:
        cases = " ".join(f"when {sql_text(c.lower())} then {sql_text(c)}" for c in column.choices)
        return f"(case lower({text}) {cases} end)"
    if kind == Kind.BOOLEAN:
        true = ", ".join(sql_text(w) for w in TRUE_WORDS)
        false = ", ".join(sql_text(w) for w in FALSE_WORDS)
        return (
            f"(case when lower({text}) in ({true}) then true "
            f"when lower({text}) in ({false}) then false end)"
        )
    if kind == Kind.TIMESTAMP:
        # Without an offset a timestamp is in UTC (never the session's time zone).
        return (
            f"(case when {_matches(text, _TIMESTAMP + _OFFSET)} then try_cast({text} as "
            f"timestamptz) when {_matches(text, _TIMESTAMP)} then try_cast({text} || 'Z' as "
            "timestamptz) end)"
        )
    shape, sql_type = {
        Kind.DATE: (_DATE, "date"),
        Kind.INTEGER: (_INTEGER, "bigint"),
        Kind.FLOAT: (_FLOAT, "double"),
        Kind.MONEY: (_MONEY, "decimal(18, 2)"),
    }[kind]
    return f"(case when {_matches(text, shape)} then try_cast({text} as {sql_type}) end)"


def _in_range(column: Column, value: str, as_of: date | None) -> str | None:
    """Where a typed value passes the column's range checks (as `parse.range_problem` and the
    pandera bounds)."""
    if column.kind in (Kind.DATE, Kind.TIMESTAMP):
        latest = as_of if column.not_after_as_of and as_of is not None else LATEST_DATE
        if column.kind == Kind.DATE:
            return f"{value} between date '{EARLIEST_DATE}' and date '{latest}'"
        # The day of a timestamp is its day in UTC, whatever the session's time zone.
        after = latest + timedelta(days=1)
        return (
            f"{value} >= timestamptz '{EARLIEST_DATE} 00:00:00+00' "
            f"and {value} < timestamptz '{after} 00:00:00+00'"
        )
    checks = []
    if column.min_value is not None:
        checks.append(f"{value} >= {column.min_value}")
    if column.max_value is not None:
        checks.append(f"{value} <= {column.max_value}")
    return " and ".join(checks) or None


def quoted_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TypedSelect:
    """SQL over a query whose columns are the cleaned text of the declared columns present
    in the file, by their own names: the typed value of each declared column, and a
    predicate saying the whole row was decided here (every value typed and in range)."""

    values: dict[str, str]  # declared column → SQL expression of its typed value
    decided: str


def typed_select(ent: Entity, present: set[str], as_of: date | None) -> TypedSelect:
    values: dict[str, str] = {}
    checks: list[str] = []
    for column in ent.columns:
        if column.name not in present:
            values[column.name] = "null"
            if column.required:
                checks.append("false")
            continue
        text = quoted_name(column.name)
        value = typed_value(column, text)
        values[column.name] = value
        if column.required:
            checks.append(f"{text} is not null")
        if value == text:
            continue
        in_range = _in_range(column, value, as_of)
        good = f"{value} is not null" + (f" and {in_range}" if in_range else "")
        checks.append(f"({text} is null or ({good}))")
    return TypedSelect(values, " and ".join(f"({c})" for c in checks) or "true")

