"""Typed parsing of raw text columns, with a human-readable reason for every failure.

Input: a polars frame of text columns (as read from a CSV file or flattened from JSON)
plus the lineage columns. Output: the typed frame of rows that parsed, and the rejected
rows with their reasons. Everything is expressed as polars expressions over whole
columns; no Python loop touches a row.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from ingest.entities import (
    DELETED_AT,
    REJECTED_COLUMNS,
    ROW_NUMBER,
    SOURCE_FILE,
    SOURCE_ROW,
    Column,
    Entity,
    Kind,
)

POLARS_TYPES: dict[Kind, pl.DataType] = {
    Kind.STRING: pl.String(),
    Kind.DATE: pl.Date(),
    Kind.TIMESTAMP: pl.Datetime("us", "UTC"),
    Kind.BOOLEAN: pl.Boolean(),
    Kind.INTEGER: pl.Int64(),
    Kind.FLOAT: pl.Float64(),
    Kind.MONEY: pl.Decimal(18, 2),
}

REJECTED_SCHEMA: dict[str, pl.DataType] = {
    name: POLARS_TYPES[kind] for name, kind in REJECTED_COLUMNS
}

KIND_HINTS: dict[Kind, str] = {
    Kind.DATE: "a date (expected YYYY-MM-DD)",
    Kind.TIMESTAMP: "a timestamp (expected ISO-8601, e.g. 2024-03-01T09:30:00+10:00)",
    Kind.BOOLEAN: "a boolean (expected true/false, 1/0 or yes/no)",
    Kind.INTEGER: "a whole number",
    Kind.FLOAT: "a number",
    Kind.MONEY: "an amount (expected a decimal such as 120.50)",
}

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")

# ISO-8601 date, optional time (minutes, seconds and fraction optional), optional offset.
_TIMESTAMP_RE = (
    r"^(\d{4}-\d{2}-\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)
_SIGN_AND_DIGITS = r"^(-\$?|\$-?)?\d{1,16}"  # -5, $5, -$5, $-5; DECIMAL(18, 2) holds 16
_MONEY_RE = _SIGN_AND_DIGITS + r"(\.\d+)?$"
# An amount is kept to the cent: more decimal places are taken only when they are zeros.
_CENTS_RE = _SIGN_AND_DIGITS + r"(\.\d{1,2}0*)?$"
_MORE_THAN_CENTS_RE = _SIGN_AND_DIGITS + r"\.\d{2}0*[1-9]\d*$"
# A leap second (:60) is not a time of day the warehouse can keep: it would become the next
# minute.
_LEAP_SECOND_RE = r"T?\d{2}:\d{2}:60(?:[.,]\d+)?\s*(?:Z|z|[+-]\d{2}(?::?\d{2})?)?$"
# The warehouse keeps timestamps to the microsecond: a finer digit that is not 0 would be
# cut off.
_BELOW_MICROSECONDS_RE = r":\d{2}[.,]\d{6}\d*[1-9]\d*\s*(?:Z|z|[+-]\d{2}(?::?\d{2})?)?$"
REASON = "_reason"

# Dates outside these are placeholders or typing errors in every extract seen (0001-01-01,
# 9999-12-31), never real visits, invoices or births: rejected, not kept.
EARLIEST_DATE = date(1900, 1, 1)
LATEST_DATE = date(2199, 12, 31)


def clean_text(col: str) -> pl.Expr:
    """Trim surrounding white space; an empty value means null (extract contract)."""
    stripped = pl.col(col).str.strip_chars()
    return pl.when(stripped == "").then(None).otherwise(stripped).alias(col)


def parse_timestamp(text: pl.Expr) -> pl.Expr:
    parts = text.str.extract_groups(_TIMESTAMP_RE)
    frac = parts.struct.field("5").fill_null("0").str.pad_end(6, "0").str.slice(0, 6)
    offset = parts.struct.field("6").fill_null("+00:00")
    offset = (
        pl.when(offset.str.to_uppercase() == "Z")
        .then(pl.lit("+00:00"))
        .when(offset.str.len_chars() == 3)
        .then(offset + ":00")
        .when(offset.str.len_chars() == 5)
        .then(offset.str.slice(0, 3) + ":" + offset.str.slice(3, 2))
        .otherwise(offset)
    )
    normalised = pl.concat_str(
        parts.struct.field("1"),
        pl.lit("T"),
        parts.struct.field("2").fill_null("00"),
        pl.lit(":"),
        parts.struct.field("3").fill_null("00"),
        pl.lit(":"),
        parts.struct.field("4").fill_null("00"),
        pl.lit("."),
        frac,
        offset,
    )
    return normalised.str.to_datetime(
        "%Y-%m-%dT%H:%M:%S%.f%:z", time_unit="us", time_zone="UTC", strict=False
    )


def parse_date(text: pl.Expr) -> pl.Expr:
    # Require the zero-padded form so that '2024-2-3' is not silently accepted.
    well_formed = text.str.contains(r"^\d{4}-\d{2}-\d{2}$")
    return pl.when(well_formed).then(text.str.to_date("%Y-%m-%d", strict=False))


def parse_boolean(text: pl.Expr) -> pl.Expr:
    lowered = text.str.to_lowercase()
    return (
        pl.when(lowered.is_in(TRUE_WORDS))
        .then(True)
        .when(lowered.is_in(FALSE_WORDS))
        .then(False)
        .otherwise(None)
    )


def parse_integer(text: pl.Expr) -> pl.Expr:
    # Exports often write whole numbers as 5.0; accept any all-zero fraction.
    return text.str.replace(r"\.0+$", "").str.to_integer(strict=False)


def parse_float(text: pl.Expr) -> pl.Expr:
    number = text.cast(pl.Float64, strict=False)
    return pl.when(number.is_finite()).then(number)


def parse_money(text: pl.Expr) -> pl.Expr:
    plain = text.str.replace(r"\$", "")
    return pl.when(text.str.contains(_CENTS_RE)).then(plain.cast(pl.Decimal(18, 2), strict=False))


PARSERS = {
    Kind.DATE: parse_date,
    Kind.TIMESTAMP: parse_timestamp,
    Kind.BOOLEAN: parse_boolean,
    Kind.INTEGER: parse_integer,
    Kind.FLOAT: parse_float,
    Kind.MONEY: parse_money,
}


# Common shapes tried whole-column first; only a column with other shapes pays for the
# general (regex-normalising) timestamp parser.
FAST_TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S%.f%#z")
_FAST_PREFIX_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"


def parse_series(column: Column, text: pl.Series) -> pl.Series:
    """The typed values of one text column; null where the text is null or does not parse."""
    if column.kind == Kind.STRING and not column.choices:
        return text
    if column.kind == Kind.STRING:
        # Enumerations match case-insensitively and are stored as the contract spells them.
        lookup = {choice.lower(): choice for choice in column.choices or ()}
        return text.str.to_lowercase().replace_strict(lookup, default=None, return_dtype=pl.String)
    if column.kind == Kind.TIMESTAMP:
        for pattern, hint in ((_LEAP_SECOND_RE, ":60"), (_BELOW_MICROSECONDS_RE, None)):
            if hint is None or text.str.contains(hint, literal=True).any():
                changed = text.str.contains(pattern)
                if changed.any():
                    text = pl.select(pl.when(changed).then(None).otherwise(text)).to_series()
        present = text.len() - text.null_count()
        # The fast formats read `9:30` as 09:30, which the contract (two digits each) does
        # not allow: they may decide the column only when every value starts the long way.
        long_way = text.str.contains(_FAST_PREFIX_RE).sum() == present
        for fmt in FAST_TIMESTAMP_FORMATS if long_way else ():
            fast = text.str.to_datetime(fmt, time_unit="us", time_zone="UTC", strict=False)
            if present - (fast.len() - fast.null_count()) == 0:
                return fast
    typed = PARSERS[column.kind](pl.col("text")).cast(POLARS_TYPES[column.kind])
    return pl.DataFrame({"text": text}).select(typed.alias(column.name)).to_series()


def quoted(text: pl.Expr) -> pl.Expr:
    """A value as it appears in a message, shortened so one bad cell cannot flood a report."""
    short = pl.when(text.str.len_chars() > 60).then(text.str.slice(0, 57) + "...").otherwise(text)
    return pl.lit("'") + short + pl.lit("'")


def typed_name(column: Column) -> str:
    return f"__typed_{column.name}"


def parse_problem(column: Column) -> pl.Expr | None:
    """A reason where the column's text is present but its typed value is null; else null."""
    if column.kind == Kind.STRING and not column.choices:
        return None
    text = pl.col(column.name)
    bad = text.is_not_null() & pl.col(typed_name(column)).is_null()
    if column.choices:
        message = f" is not one of: {', '.join(column.choices)}"
    else:
        message = f" is not {KIND_HINTS[column.kind]}"
    reason = pl.lit(f"{column.name} ") + quoted(text) + pl.lit(message)
    # Values of the right shape that would still be changed to fit: say exactly why.
    specific = {
        Kind.MONEY: [(_MORE_THAN_CENTS_RE, " has more than two decimal places; amounts are "
                      "kept to the cent and this one would be rounded: fix the amount in the "
                      "export")],
        Kind.TIMESTAMP: [(_LEAP_SECOND_RE, " has 60 seconds, which would become the next "
                          "minute; write :59 or :00"),
                         (_BELOW_MICROSECONDS_RE, " is finer than a microsecond, which the "
                          "warehouse keeps; it would be cut off: round it in the export")],
    }.get(column.kind, [])  # fmt: skip
    for pattern, why in specific:
        reason = (
            pl.when(text.str.contains(pattern))
            .then(pl.lit(f"{column.name} ") + quoted(text) + pl.lit(why))
            .otherwise(reason)
        )
    return pl.when(bad).then(reason)


def range_problem(column: Column, as_of: date | None) -> pl.Expr | None:
    """A reason where a date lies outside what the column can hold; else null."""
    if column.kind not in (Kind.DATE, Kind.TIMESTAMP):
        return None
    typed = pl.col(typed_name(column))
    day = typed if column.kind == Kind.DATE else typed.dt.date()
    text = pl.col(column.name)
    too_early = pl.lit(
        f" is before {EARLIEST_DATE.isoformat()}, which no real record has (a placeholder?)"
    )
    if column.not_after_as_of and as_of is not None:
        latest, late = as_of, f" is after the as-of date {as_of.isoformat()}; it cannot be"
        late += " in the future"
    else:
        latest, late = LATEST_DATE, f" is after {LATEST_DATE.isoformat()} (a placeholder?)"
    return (
        pl.when(day < pl.lit(EARLIEST_DATE))
        .then(pl.lit(f"{column.name} ") + quoted(text) + too_early)
        .when(day > pl.lit(latest))
        .then(pl.lit(f"{column.name} ") + quoted(text) + pl.lit(late))
    )


def missing_problem(column: Column) -> pl.Expr:
    return pl.when(pl.col(column.name).is_null()).then(
        pl.lit(f"{column.name} is empty but required")
    )


def typed_schema(ent: Entity) -> dict[str, pl.DataType]:
    return {c.name: POLARS_TYPES[c.kind] for c in ent.columns}


def record_json(text_columns: list[str]) -> pl.Expr:
    """The original text of a row, kept with its rejection so that nothing is lost."""
    return pl.struct(text_columns).struct.json_encode().alias("record")


def data_columns(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (SOURCE_FILE, SOURCE_ROW, ROW_NUMBER, DELETED_AT)]


def clean_frame(text: pl.DataFrame) -> pl.DataFrame:
    return text.with_columns(clean_text(c) for c in data_columns(text))


def parse_entity(
    text: pl.DataFrame, ent: Entity, as_of: date | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Type the declared columns of `text`; return (parsed rows, rejected rows).

    `text` (cleaned by `clean_frame`) holds every declared column (absent ones as nulls),
    any extra columns, and the lineage columns. `as_of` is the day the extract describes:
    a column that cannot lie after it (a date of birth) is checked against it. Extra
    columns stay text. Rejected rows carry `source_file`, `source_row`, `reason` (all
    problems of the row, joined by '; ') and `record`.
    """
    text_columns = data_columns(text)
    typed = [c for c in ent.columns if c.kind != Kind.STRING or c.choices]
    frame = text.with_columns(parse_series(c, text[c.name]).alias(typed_name(c)) for c in typed)
    problems = [p for c in ent.columns if (p := parse_problem(c)) is not None]
    problems += [p for c in ent.columns if (p := range_problem(c, as_of)) is not None]
    problems += [missing_problem(c) for c in ent.columns if c.required]
    reason = (
        pl.concat_str(problems, separator="; ", ignore_nulls=True)
        if problems
        else pl.lit(None, dtype=pl.String)
    )
    # concat_str of all-null inputs gives "" with ignore_nulls; normalise to null.
    frame = frame.with_columns(pl.when(reason == "").then(None).otherwise(reason).alias(REASON))
    bad = frame.filter(pl.col(REASON).is_not_null())
    good = frame.filter(pl.col(REASON).is_null())

    rejected = bad.select(
        pl.col(SOURCE_FILE).alias("source_file"),
        pl.col(SOURCE_ROW).alias("source_row"),
        pl.col(REASON).alias("reason"),
        record_json(text_columns),
    )
    parsed = good.select(
        [pl.col(typed_name(c)).alias(c.name) if c in typed else pl.col(c.name) for c in ent.columns]
        + [pl.col(c) for c in text_columns if c not in ent.column_names]
        + [pl.col(c) for c in (SOURCE_FILE, SOURCE_ROW, ROW_NUMBER) if c in good.columns]
    )
    return parsed, rejected
