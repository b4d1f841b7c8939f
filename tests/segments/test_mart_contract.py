"""The test warehouses of conftest.py stand for the marts dbt builds: same tables, same
columns in the same order, same types as the enforced contracts of
dbt_project/models/marts/_marts__models.yml (read here on its own, not through conftest).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import yaml

from segments.field_catalogue import DEFAULT_CATALOGUE_PATH, ENTITY_TABLES, EVENT_SOURCES


def _contract() -> dict[str, dict]:
    doc = yaml.safe_load(DEFAULT_CATALOGUE_PATH.read_text(encoding="utf-8"))
    return {m["name"]: m for m in doc["models"]}


def _duckdb_type(con: duckdb.DuckDBPyConnection, data_type: str) -> str:
    """DuckDB's own spelling of a dbt data type (`timestamp with time zone`, `bigint`...)."""
    return con.execute(f"select typeof(cast(null as {data_type}))").fetchone()[0]


def test_every_mart_has_an_enforced_contract_with_typed_columns() -> None:
    for name, model in _contract().items():
        assert model["config"]["contract"] == {"enforced": True}, name
        untyped = [c["name"] for c in model["columns"] if not c.get("data_type")]
        assert not untyped, (name, untyped)


def test_the_marts_segments_read_are_in_the_contract() -> None:
    contract = _contract()
    for table in ENTITY_TABLES.values():
        assert table in contract, table
    for source in EVENT_SOURCES.values():
        columns = {c["name"] for c in contract[source.table]["columns"]}
        assert {"patient_id", source.date_field} <= columns, source.table
        assert ("case_id" in columns) == source.has_case, source.table


def test_test_warehouse_has_the_contract_tables_columns_and_types(
    tmp_path: Path, make_warehouse: Callable[[Path, dict], Path]
) -> None:
    db = make_warehouse(tmp_path / "wh.duckdb", {})
    with duckdb.connect(str(db), read_only=True) as con:
        built: dict[str, list[tuple[str, str]]] = {}
        for table, column, data_type in con.execute(
            "select table_name, column_name, data_type from information_schema.columns "
            "where table_schema = 'marts' order by table_name, ordinal_position"
        ).fetchall():
            built.setdefault(table, []).append((column, data_type))
        expected = {
            name: [(c["name"], _duckdb_type(con, c["data_type"])) for c in model["columns"]]
            for name, model in _contract().items()
        }
    assert sorted(built) == sorted(expected)
    for table, columns in expected.items():
        assert built[table] == columns, table
