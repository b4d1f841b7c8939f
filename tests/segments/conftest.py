"""Fixtures for segment tests: the field catalogue in dbt YAML shape and tiny warehouses
built from hand-written rows in a real DuckDB file.

The marts below are exactly those of docs/warehouse.md and the event-mart contract.
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
from segments.field_catalogue import Catalogue, load_catalogue
from segments.validation import parse_definition, read_yaml

MARTS: dict[str, list[tuple[str, str]]] = {
    "patient_features": [
        ("patient_id", "varchar"), ("first_name", "varchar"), ("last_name", "varchar"),
        ("sex", "varchar"), ("status", "varchar"), ("state", "varchar"),
        ("post_code", "varchar"), ("city", "varchar"), ("referral_source", "varchar"),
        ("referring_provider", "varchar"), ("insurance_plan", "varchar"),
        ("latitude", "double"), ("longitude", "double"), ("age", "integer"),
        ("date_of_birth", "date"), ("days_until_birthday", "integer"),
        ("has_email", "boolean"), ("has_mobile", "boolean"), ("has_whatsapp", "boolean"),
        ("email_opted_out", "boolean"), ("sms_opted_out", "boolean"),
        ("first_visit_date", "date"), ("last_visit_date", "date"),
        ("days_since_last_visit", "integer"), ("next_appointment_at", "timestamptz"),
        ("total_visits", "integer"), ("visits_last_365d", "integer"),
        ("dna_count", "integer"), ("cancellation_count", "integer"),
        ("cadence_days", "double"), ("cadence_overdue_ratio", "double"),
        ("last_practitioner_id", "varchar"), ("last_practitioner_active", "boolean"),
        ("last_practitioner_name", "varchar"),
        ("last_appointment_type", "varchar"), ("last_appointment_category", "varchar"),
        ("appointment_categories_attended", "varchar[]"),
        ("lifetime_value", "decimal(18,2)"), ("total_paid", "decimal(18,2)"),
        ("balance_due", "decimal(18,2)"), ("avg_visit_fee", "double"),
        ("oldest_open_invoice_days", "integer"), ("open_case_count", "integer"),
        ("lead_status", "varchar"), ("lead_campaign", "varchar"),
        ("lead_created_date", "date"), ("lead_owner", "varchar"),
        ("procedure_of_interest", "varchar"), ("on_waitlist", "boolean"),
        ("diagnosis_codes", "varchar[]"),
    ],
    "case_features": [
        ("case_id", "varchar"), ("patient_id", "varchar"), ("name", "varchar"),
        ("status", "varchar"), ("issue_date", "date"), ("expiry_date", "date"),
        ("days_until_expiry", "integer"), ("max_sessions", "integer"),
        ("sessions_done", "integer"), ("sessions_booked", "integer"),
        ("sessions_left", "integer"), ("pct_sessions_booked", "double"),
        ("pct_sessions_done", "double"), ("total_invoiced", "decimal(18,2)"),
        ("max_invoiceable_amount", "decimal(18,2)"), ("invoiceable_left", "decimal(18,2)"),
        ("pct_invoiced", "double"),
        ("referral_type", "varchar"),
    ],
    "appointments": [
        ("appointment_id", "varchar"), ("patient_id", "varchar"), ("case_id", "varchar"),
        ("starts_at", "timestamptz"), ("start_date", "date"), ("ends_at", "timestamptz"),
        ("appointment_type_id", "varchar"), ("appointment_type", "varchar"),
        ("category", "varchar"), ("practitioner_id", "varchar"),
        ("practitioner_name", "varchar"), ("location_id", "varchar"),
        ("location_name", "varchar"), ("status", "varchar"), ("is_booked", "boolean"),
        ("created_at", "timestamptz"), ("cancelled_at", "timestamptz"),
    ],
    "invoices": [
        ("invoice_id", "varchar"), ("patient_id", "varchar"), ("issue_date", "date"),
        ("status", "varchar"), ("total_amount", "decimal(18,2)"),
        ("amount_paid", "decimal(18,2)"), ("balance_due", "decimal(18,2)"),
        ("case_id", "varchar"), ("appointment_id", "varchar"),
        ("practitioner_id", "varchar"), ("days_outstanding", "integer"),
    ],
    "leads": [
        ("lead_id", "varchar"), ("patient_id", "varchar"), ("campaign_name", "varchar"),
        ("created_at", "timestamptz"), ("created_date", "date"), ("owner", "varchar"),
        ("status", "varchar"), ("procedure_of_interest", "varchar"), ("source", "varchar"),
        ("has_appointment", "boolean"),
    ],
    "diagnoses": [
        ("patient_id", "varchar"), ("code_system", "varchar"), ("code", "varchar"),
        ("recorded_at", "timestamptz"), ("recorded_date", "date"),
    ],
}  # fmt: skip


def write_catalogue(path: Path) -> Path:
    """The marts' dbt YAML in the shape the dbt project documents them."""
    doc = {
        "version": 2,
        "models": [
            {
                "name": table,
                "description": f"marts.{table}",
                "columns": [
                    {"name": c, "data_type": t, "description": f"{c} of {table}"} for c, t in cols
                ],
            }
            for table, cols in MARTS.items()
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


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
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    path = tmp_path_factory.mktemp("catalogue") / "_marts__models.yml"
    return load_catalogue(write_catalogue(path))


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
