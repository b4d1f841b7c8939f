"""The segment asset factory wired through Dagster: keys, deps, groups, metadata, tables."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from orchestration.resources import ClinicSettingsResource, StateStoreResource, WarehouseResource
from orchestration.segments import build_segment_assets, group_name_for

LAPSED = """
name: Lapsed
department: front-desk
include:
  conditions:
    - {field: last_visit_date, op: lt, value: "-6 months"}
    - events: appointments
      where: {conditions: [{field: status, op: eq, value: attended}]}
      count: {op: gte, value: 1}
"""
FROZEN = """
name: Frozen list
mode: snapshot
include:
  conditions: [{field: status, op: eq, value: active}]
"""
BROKEN = "name: broken\ninclude:\n  conditions:\n    - {field: no_such_field, op: is_null}\n"


def rows(status_b: str) -> dict:
    return {
        "patient_features": [
            dict(patient_id="A", status="active", last_visit_date=date(2024, 1, 5)),
            dict(patient_id="B", status=status_b, last_visit_date=date(2024, 8, 1)),
        ],
        "appointments": [
            dict(appointment_id="1", patient_id="A", start_date=date(2024, 1, 5),
                 status="attended"),
            dict(appointment_id="2", patient_id="B", start_date=date(2024, 8, 1),
                 status="attended"),
        ],
    }  # fmt: skip


def materialize(assets, db: Path, state: str, as_of: str, selection=None, **kw):
    return dg.materialize(
        assets,
        selection=selection,
        resources={
            "warehouse": WarehouseResource(duckdb_path=str(db)),
            "settings": ClinicSettingsResource(),
            "state_store": StateStoreResource(url=state),
        },
        partition_key=as_of,
        **kw,
    )


def metadata_by_slug(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        out[mat.asset_key.path[-1]] = mat.metadata
    return out


def test_segment_assets_end_to_end(tmp_path: Path, make_warehouse) -> None:
    folder = tmp_path / "segs"
    folder.mkdir()
    (folder / "lapsed.yaml").write_text(LAPSED)
    (folder / "frozen.yaml").write_text(FROZEN)
    db = make_warehouse(tmp_path / "wh.duckdb", rows("active"))
    state = f"sqlite:///{tmp_path / 'state.db'}"

    assets = build_segment_assets([folder])
    by_key = {a.key: a for a in assets}
    lapsed = by_key[dg.AssetKey(["segments", "lapsed"])]
    assert set(lapsed.dependency_keys) == {
        dg.AssetKey(["marts", "patient_features"]),
        dg.AssetKey(["marts", "appointments"]),
    }
    assert lapsed.group_names_by_key[lapsed.key] == "front_desk"
    frozen = by_key[dg.AssetKey(["segments", "frozen"])]
    assert frozen.group_names_by_key[frozen.key] == "segments"

    # As of 2024-08-31, "-6 months" = 2024-02-29: A (5 Jan) is lapsed, B (1 Aug) is not.
    result = materialize(assets, db, state, "2024-08-31")
    assert result.success
    meta = metadata_by_slug(result)
    assert meta["lapsed"]["members"].value == 1
    assert meta["lapsed"]["entered"].value == 1
    assert meta["lapsed"]["exited"].value == 0
    assert "| A |" in meta["lapsed"]["sample"].value
    assert meta["frozen"]["members"].value == 2
    assert meta["frozen"]["snapshot_frozen_this_run"].value is True
    checks = result.get_asset_check_evaluations()
    assert sorted(c.asset_key.path[-1] for c in checks) == ["frozen", "lapsed"]
    assert all(c.passed for c in checks)

    # Next day B turns inactive: the dynamic segment does not care (B was never lapsed);
    # the snapshot keeps A and B.
    make_warehouse(db, rows("inactive"))
    result = materialize(assets, db, state, "2024-09-01")
    meta = metadata_by_slug(result)
    assert meta["frozen"]["members"].value == 2
    assert meta["frozen"]["snapshot_frozen_this_run"].value is False
    assert meta["lapsed"]["previous_as_of"].value == "2024-08-31"

    # Re-snapshot on purpose through run config.
    result = materialize(
        assets,
        db,
        state,
        "2024-09-02",
        selection=[dg.AssetKey(["segments", "frozen"])],
        run_config={"ops": {"segments__frozen": {"config": {"resnapshot": True}}}},
    )
    assert result.success
    con = duckdb.connect(str(db), read_only=True)
    try:
        members = con.execute(
            "select segment_slug, patient_id from segments.membership order by 1, 2"
        ).fetchall()
    finally:
        con.close()
    assert members == [("frozen", "A"), ("lapsed", "A")]


def test_invalid_definition_fails_its_own_asset_only(tmp_path: Path, make_warehouse) -> None:
    folder = tmp_path / "segs"
    folder.mkdir()
    (folder / "broken.yaml").write_text(BROKEN)
    (folder / "frozen.yaml").write_text(FROZEN)
    db = make_warehouse(tmp_path / "wh.duckdb", rows("active"))
    assets = build_segment_assets([folder])
    result = materialize(
        assets, db, f"sqlite:///{tmp_path / 's.db'}", "2024-08-31", raise_on_error=False
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert len(failures) == 1
    text = str(failures[0].event_specific_data.error)
    assert "include.conditions[0].field" in text and "no_such_field" in text
    done = [e.asset_key.path[-1] for e in result.get_asset_materialization_events()]
    assert done == ["frozen"]


def test_group_names_are_sanitised() -> None:
    assert group_name_for("front-desk") == "front_desk"
    assert group_name_for("Clinical coordination!") == "Clinical_coordination"
    assert group_name_for(None) == "segments"
