"""pandera polars schemas for the raw entities, built from the entity specs.

One schema per entity (`RAW_SCHEMAS["patients"]`, ...). They check the typed frame that
is about to be loaded: types, required values, allowed values, numeric bounds and key
uniqueness. Rows that fail a check are rejected with a reason naming the check.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from ingest.entities import ENTITIES, Column, Entity
from ingest.parse import POLARS_TYPES


def _checks(column: Column) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if column.choices:
        checks.append(pa.Check.isin(list(column.choices)))
    if column.min_value is not None and column.max_value is not None:
        checks.append(pa.Check.in_range(column.min_value, column.max_value))
    elif column.min_value is not None:
        checks.append(pa.Check.ge(column.min_value))
    elif column.max_value is not None:
        checks.append(pa.Check.le(column.max_value))
    return checks


def schema_for(ent: Entity) -> pa.DataFrameSchema:
    columns = {
        c.name: pa.Column(
            POLARS_TYPES[c.kind],
            checks=_checks(c),
            nullable=not c.required,
            unique=c.name == ent.key,
            description=c.name,
        )
        for c in ent.columns
    }
    # strict=False: extra columns of the extract are kept as text, unchecked.
    return pa.DataFrameSchema(columns, strict=False, name=f"raw.{ent.name}")


RAW_SCHEMAS: dict[str, pa.DataFrameSchema] = {e.name: schema_for(e) for e in ENTITIES}


def failure_reason() -> pl.Expr:
    """A readable reason for one row of pandera's failure cases."""
    column, check, value = pl.col("column"), pl.col("check"), pl.col("failure_case")
    return (
        pl.when(check == "not_nullable")
        .then(column + pl.lit(" is empty but required"))
        .when(check.str.starts_with("in_range"))
        .then(
            column
            + pl.lit(" ")
            + value
            + pl.lit(" is outside the allowed range ")
            + check.str.strip_prefix("in_range")
        )
        .when(check.str.starts_with("greater_than_or_equal_to"))
        .then(
            column + pl.lit(" ") + value + pl.lit(" is below the allowed minimum ")
            + check.str.extract(r"\((.*)\)")
        )
        .when(check.str.starts_with("less_than_or_equal_to"))
        .then(
            column + pl.lit(" ") + value + pl.lit(" is above the allowed maximum ")
            + check.str.extract(r"\((.*)\)")
        )
        .when(check.str.contains("unique"))
        .then(column + pl.lit(" '") + value + pl.lit("' appears more than once"))
        .otherwise(column + pl.lit(" '") + value + pl.lit("' fails check ") + check)
    )


def validate(frame: pl.DataFrame, ent: Entity) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Validate with pandera; return (valid rows, failures as row index + reason)."""
    try:
        RAW_SCHEMAS[ent.name].validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        if "index" not in cases.columns or cases["index"].null_count() > 0:
            # A schema-level failure (wrong dtype, missing column) is a bug in ingest
            # itself, not a bad row: surface it loudly.
            raise
        reasons = (
            cases.select(
                pl.col("index").cast(pl.Int64).alias("_index"),
                failure_reason().alias("reason"),
            )
            .group_by("_index", maintain_order=True)
            .agg(pl.col("reason").str.join("; "))
        )
        indexed = frame.with_row_index("_index").with_columns(pl.col("_index").cast(pl.Int64))
        valid = indexed.join(reasons, on="_index", how="anti").drop("_index")
        failed = indexed.join(reasons, on="_index", how="inner")
        return valid, failed
    empty = (
        frame.head(0)
        .with_row_index("_index")
        .with_columns(
            pl.col("_index").cast(pl.Int64), pl.lit(None, dtype=pl.String).alias("reason")
        )
    )
    return frame, empty
