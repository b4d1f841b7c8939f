"""The DuckDB warehouse: connections and the layout of the `raw` schema."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def connect(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse file (creating its folder), always closing it afterwards.

    DuckDB allows one writer per file, so writers hold the connection only as long as
    they need it.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as err:
        if "lock" not in str(err).lower():
            raise
        from clinic_audiences.run_lock import WarehouseBusy, holder

        raise WarehouseBusy(
            f"the warehouse {path} is open for writing by {holder(path)}; DuckDB lets no "
            "other process in meanwhile. Try again when that run has finished"
        ) from None
    try:
        con.execute("SET TimeZone = 'UTC'")
        # DuckDB caches up to 80% of RAM by default; a shared machine may want less.
        if limit := os.environ.get("DUCKDB_MEMORY_LIMIT"):
            con.execute("SET memory_limit = ?", [limit])
        yield con
    finally:
        con.close()


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


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """The single value a query returns (DuckDB 2 relations have no fetchone())."""
    rows = con.execute(sql, params or []).fetchall()  # fetch all: DuckDB 2 needs it finished
    return rows[0][0] if rows else None
