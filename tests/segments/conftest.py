"""Fixtures for segment tests: the field catalogue of the dbt project and tiny warehouses
built from hand-written rows in a real DuckDB file.

The marts (tables, columns and types) are read from the dbt contract,
dbt_project/models/marts/_marts__models.yml, so the test warehouses cannot drift from it.
Helpers reach tests as fixtures (`make_warehouse`), so the tests need no import path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from segments.evaluate import WarehouseFrames, evaluate
from segments.field_catalogue import DEFAULT_CATALOGUE_PATH, Catalogue, load_catalogue
from segments.validation import parse_definition, read_yaml

# The marts' dbt contract (dbt_project/models/marts/_marts__models.yml), which is also the
# segment language's field catalogue.
MARTS_YAML = DEFAULT_CATALOGUE_PATH


def marts_from_dbt_yaml(path: Path = MARTS_YAML) -> dict[str, list[tuple[str, str]]]:
    """Every model of the marts' dbt YAML with its columns and `data_type`s, in order.

    The YAML's data types are DuckDB spellings (`varchar[]`, `decimal(18,2)`,
    `timestamp with time zone`), used as they stand in the test warehouse's DDL.
    """
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    marts: dict[str, list[tuple[str, str]]] = {}
    for model in doc["models"]:
        cols = []
        for col in model["columns"]:
            if not col.get("data_type"):
                raise ValueError(f"{path}: {model['name']}.{col['name']} has no data_type")
            cols.append((col["name"], col["data_type"]))
        marts[model["name"]] = cols
    return marts


# model name -> [(column, data type)], as the dbt contract declares them.
MARTS: dict[str, list[tuple[str, str]]] = marts_from_dbt_yaml()


def build_warehouse(path: Path, rows: dict[str, list[dict[str, Any]]]) -> Path:
    """Create every mart (empty unless rows are given); unlisted columns are null.

    Values are inserted as parameters; DuckDB casts them to the mart's column types.
    """
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("create schema if not exists marts")
        for table, cols in MARTS.items():
            ddl = ", ".join(f'"{c}" {t}' for c, t in cols)
            con.execute(f"create or replace table marts.{table} ({ddl})")
            table_rows = rows.get(table, [])
            for row in table_rows:
                unknown = set(row) - {c for c, _ in cols}
                assert not unknown, f"{table}: no column(s) {unknown}"
            if table_rows:
                names = [c for c, _ in cols]
                placeholders = ", ".join("?" for _ in names)
                con.executemany(
                    f"insert into marts.{table} values ({placeholders})",
                    [[r.get(c) for c in names] for r in table_rows],
                )
    finally:
        con.close()
    return path


@pytest.fixture(scope="session")
def catalogue() -> Catalogue:
    """The field catalogue of the dbt project itself (the file MARTS is read from)."""
    return load_catalogue(MARTS_YAML)


Rows = dict[str, list[dict[str, Any]]]
RunSegment = Callable[..., list[Any]]


@pytest.fixture(scope="session")
def warehouse_for(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Rows], Path]:
    """A DuckDB warehouse file holding `rows`, built once per distinct set of rows."""
    built: dict[str, Path] = {}

    def get(rows: Rows) -> Path:
        key = repr(sorted(rows.items()))
        if key not in built:
            built[key] = build_warehouse(tmp_path_factory.mktemp("wh") / "wh.duckdb", rows)
        return built[key]

    return get


@pytest.fixture
def run_segment(warehouse_for: Callable[[Rows], Path], catalogue: Catalogue) -> RunSegment:
    """Evaluate a YAML definition on a warehouse holding `rows`; returns the member keys.

    Patient segments return sorted patient ids, case segments sorted case ids (evaluation
    itself keeps the warehouse's row order).
    """

    def run(yaml_text: str, rows: Rows, as_of: date, timezone: str = "UTC") -> list[Any]:
        db = warehouse_for(rows)
        definition = parse_definition(read_yaml(yaml_text, "test.yaml"), "test.yaml", catalogue)
        members = evaluate(definition, WarehouseFrames(db), catalogue, as_of, timezone)
        key = "case_id" if definition.entity == "case" else "patient_id"
        return sorted(members[key].to_list(), key=lambda k: (k is None, k))

    return run


@pytest.fixture(scope="session")
def make_warehouse() -> Callable[[Path, Rows], Path]:
    return build_warehouse
