"""The layout of the warehouse's `raw` schema: one table per entity and one for its
rejected rows."""

from __future__ import annotations

import duckdb

from ingest.entities import ENTITIES, REJECTED_COLUMNS, SOURCE_FILE, SOURCE_ROW, Entity, Kind

DUCKDB_TYPES: dict[Kind, str] = {
    Kind.STRING: "VARCHAR",
    Kind.DATE: "DATE",
    Kind.TIMESTAMP: "TIMESTAMPTZ",
    Kind.BOOLEAN: "BOOLEAN",
    Kind.INTEGER: "BIGINT",
    Kind.FLOAT: "DOUBLE",
    Kind.MONEY: "DECIMAL(18, 2)",
}


def raw_columns_ddl(ent: Entity) -> str:
    cols = [f'"{c.name}" {DUCKDB_TYPES[c.kind]}' for c in ent.columns]
    cols += [f'"{SOURCE_FILE}" VARCHAR', f'"{SOURCE_ROW}" BIGINT']
    return ", ".join(cols)


def rejected_columns_ddl() -> str:
    return ", ".join(f"{name} {DUCKDB_TYPES[kind]}" for name, kind in REJECTED_COLUMNS)


def create_empty_raw_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every `raw.<entity>` and `raw.<entity>__rejected` table that is missing.

    Tests and the dbt project use this to stand up a warehouse with the exact raw layout
    before (or without) an ingest run.
    """
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    for ent in ENTITIES:
        con.execute(f"CREATE TABLE IF NOT EXISTS raw.{ent.name} ({raw_columns_ddl(ent)})")
        con.execute(
            f"CREATE TABLE IF NOT EXISTS raw.{ent.name}__rejected ({rejected_columns_ddl()})"
        )
