"""The work-list asset: wiring (key, deps, resources) and counts per stage as metadata."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dagster as dg
from sqlalchemy.engine import Engine

from orchestration.resources import ClinicSettingsResource, StateStoreResource, WarehouseResource
from orchestration.workflow import build_workflow_defs
from segments.workflow_block import WorkflowSpec, WorkListInfo
from workflow.api import history, list_members, move


def test_asset_per_work_list_downstream_of_its_segment(
    worklist: Callable[..., WorkListInfo],
) -> None:
    booking = worklist("lapsed-physio")
    plain = worklist("billing-chase", segment_slug="outstanding-balances",
                     spec=WorkflowSpec(stages=["To chase", "Paid"]))  # fmt: skip
    assets = {a.key: a for a in build_workflow_defs([booking, plain]).assets}  # type: ignore[union-attr]
    lapsed = dg.AssetKey(["worklists", "lapsed-physio"])
    billing = dg.AssetKey(["worklists", "billing-chase"])
    assert set(assets) == {lapsed, billing}
    assert assets[lapsed].asset_deps[lapsed] == {
        dg.AssetKey(["segments", "lapsed-physio"]),
        dg.AssetKey(["marts", "appointments"]),  # it has on_booking
    }
    assert assets[billing].asset_deps[billing] == {
        dg.AssetKey(["segments", "outstanding-balances"])
    }
    assert assets[lapsed].required_resource_keys >= {"warehouse", "settings"}


def test_empty_definition_set_gives_no_assets() -> None:
    assert list(build_workflow_defs([]).assets or []) == []


def test_materialise_reports_counts_per_stage(
    tmp_path: Path,
    state_url: str,
    engine: Engine,
    add_appointments: Callable[..., None],
    build_warehouse: Callable[..., None],
    worklist: Callable[..., WorkListInfo],
) -> None:
    db = tmp_path / "warehouse.duckdb"
    wl = worklist()
    (asset,) = build_workflow_defs([wl]).assets  # type: ignore[misc]
    resources = {
        "warehouse": WarehouseResource(duckdb_path=str(db)),
        "settings": ClinicSettingsResource(clinic_timezone="UTC"),
        "state_store": StateStoreResource(url=state_url),
    }

    def run(day: str) -> dict[str, object]:
        result = dg.materialize([asset], resources=resources, partition_key=day)
        assert result.success
        (mat,) = result.asset_materializations_for_node("worklists__lapsed_physio")
        return {k: v.value for k, v in mat.metadata.items()}

    build_warehouse(db, [("p1", None), ("p2", None), ("p3", None)], "2026-03-09")
    first = run("2026-03-09")
    assert (first["entered_this_run"], first["members"], first["stage: To call"]) == (3, 3, 3)

    p1_entered = next(m.entered_at for m in list_members(engine, wl) if m.member_id == "p1")
    move(engine, wl, "p2", "Not interested", by="ann")
    # p3 leaves the segment; p1 books an appointment on or after the as-of date, a minute
    # after entering the list (the asset stamps entry with the wall clock).
    build_warehouse(db, [("p1", None), ("p2", None)], "2026-03-10")
    booked = p1_entered + timedelta(minutes=1)
    add_appointments(db, [("a1", "p1", "2026-04-01 00:00+00", booked, None)])
    second = run("2026-03-10")
    # p1 -> Booked (terminal), p2 -> Not interested (terminal), p3 left from To call.
    assert (second["entered_this_run"], second["left_this_run"], second["booked_this_run"]) == (
        0, 1, 1,
    )  # fmt: skip
    assert (second["stage: To call"], second["stage: Booked"],
            second["stage: Not interested"]) == (0, 1, 1)  # fmt: skip
    assert (second["members"], second["open"], second["left_segment"]) == (2, 0, 1)
    assert [(e.actor, e.to_stage) for e in history(engine, wl, "p1")][-1] == ("system", "Booked")
