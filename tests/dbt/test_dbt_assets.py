"""The dbt models as Dagster assets: keys, groups, lineage to the ingest assets, and a
real materialisation of the tiny clinic through Dagster (dbt tests become checks)."""

import os
import shutil
from datetime import date

import dagster as dg
import duckdb
import pytest
from dagster_dbt import DbtCliResource

from ingest.entities import ENTITIES
from orchestration.dbt import (
    build_dbt_defs,
    dbt_executable,
    dbt_project,
    environment,
    manifest_is_stale,
)
from orchestration.resources import ClinicSettingsResource, WarehouseResource

warehouse_dbt_assets, analytics_dbt_assets = build_dbt_defs().assets

pytestmark = pytest.mark.dbt

MARTS = {
    "patient_features", "case_features", "appointments", "invoices", "invoice_items", "leads",
    "diagnoses", "cases",
}
STAGING_BY_ENTITY = {e.name: f"stg_raw__{e.name}" for e in ENTITIES} | {
    "waitlist": "stg_raw__waitlist_entries"
}


def specs_by_key() -> dict[dg.AssetKey, dg.AssetSpec]:
    return {spec.key: spec for spec in warehouse_dbt_assets.specs}


def test_models_are_keyed_and_grouped_by_schema():
    specs = specs_by_key()
    for mart in MARTS:
        assert specs[dg.AssetKey(["marts", mart])].group_name == "marts"
    assert specs[dg.AssetKey(["intermediate", "int_appointments_classified"])].group_name == (
        "intermediate"
    )
    # analytics/ (conversion reporting) is built by the same asset when present.
    schemas = {key.path[0] for key in specs}
    assert {"staging", "intermediate", "marts"} <= schemas <= {
        "staging", "intermediate", "marts", "analytics"
    }
    assert all(spec.group_name == spec.key.path[0] for spec in specs.values())


def test_each_staging_model_reads_exactly_its_ingest_asset():
    specs = specs_by_key()
    for entity, model in STAGING_BY_ENTITY.items():
        spec = specs[dg.AssetKey(["staging", model])]
        assert {dep.asset_key for dep in spec.deps} == {dg.AssetKey(["raw", entity])}
    # Nothing outside staging reads raw.
    for key, spec in specs.items():
        if key.path[0] != "staging":
            assert all(dep.asset_key.path[0] != "raw" for dep in spec.deps), key


def test_dbt_data_tests_are_asset_checks():
    checks = {(c.asset_key, c.name) for c in warehouse_dbt_assets.check_specs}
    assert (dg.AssetKey(["marts", "patient_features"]), "unique_patient_features_patient_id") in (
        checks
    )
    assert any(key == dg.AssetKey(["marts", "case_features"]) for key, _ in checks)


def test_manifest_is_current():
    assert dbt_project.manifest_path.exists()
    assert not manifest_is_stale(dbt_project)


def test_environment_is_restored(monkeypatch):
    monkeypatch.setenv("DUCKDB_PATH", "before.duckdb")
    with environment(DUCKDB_PATH="/tmp/during.duckdb"):
        assert os.environ["DUCKDB_PATH"] == "/tmp/during.duckdb"
    assert os.environ["DUCKDB_PATH"] == "before.duckdb"


def test_materialise_through_dagster(tiny_warehouse, tmp_path, monkeypatch):
    # A relative DUCKDB_PATH is resolved against the directory the run starts in, not
    # against dbt_project/ where dbt itself runs.
    shutil.copyfile(tiny_warehouse.raw_only, tmp_path / "warehouse.duckdb")
    monkeypatch.chdir(tmp_path)
    result = dg.materialize(
        [warehouse_dbt_assets],
        resources={
            "dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable()),
            "settings": ClinicSettingsResource(clinic_timezone="Australia/Sydney"),
            "warehouse": WarehouseResource(duckdb_path="warehouse.duckdb"),
        },
        partition_key="2024-03-01",
    )
    assert result.success
    materialised = {e.asset_key for e in result.get_asset_materialization_events()}
    assert {dg.AssetKey(["marts", m]) for m in MARTS} <= materialised
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) >= 50
    assert all(e.passed for e in evaluations if e.severity == dg.AssetCheckSeverity.ERROR)

    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        # The run's settings reached dbt as vars.
        assert con.sql("select as_of, clinic_timezone from marts.warehouse_as_of").fetchall() == [
            (date(2024, 3, 1), "Australia/Sydney")
        ]
        # p1: six visit dates, gaps 14 27 35 30 31 -> median 30 (see test_feature_marts).
        assert con.sql(
            "select cadence_days, total_visits from marts.patient_features where patient_id = 'p1'"
        ).fetchall() == [(30.0, 7)]
    finally:
        con.close()
