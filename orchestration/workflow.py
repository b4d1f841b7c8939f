"""Work-list assets: one per work list, downstream of its segment, partitioned by as-of day.

Only wiring: the sync itself lives in `workflow.run`.
"""

from collections.abc import Iterable

import dagster as dg

from orchestration.resources import (
    PROGRESS,
    ClinicSettingsResource,
    StateStoreResource,
    WarehouseResource,
    as_of_day,
    daily_partitions,
    key_part,
)
from segments.members import evaluated_from
from segments.workflow_block import WorkListInfo
from workflow.api import SyncResult
from workflow.run import materialize_worklist


def _metadata(info: WorkListInfo, result: SyncResult) -> dict[str, dg.MetadataValue]:
    counts = result.counts
    assert counts is not None
    lines = ["| stage | members | left segment |", "|---|---:|---:|"]
    lines += [
        f"| {s}{' (terminal)' if s in counts.terminal else ''} | {counts.active.get(s, 0)} "
        f"| {counts.left_segment.get(s, 0)} |"
        for s in counts.stages
    ]
    meta: dict[str, dg.MetadataValue] = {
        "members": dg.MetadataValue.int(sum(counts.active.values())),
        "open": dg.MetadataValue.int(counts.open),
        "left_segment": dg.MetadataValue.int(sum(counts.left_segment.values())),
        "entered_this_run": dg.MetadataValue.int(result.entered),
        "left_this_run": dg.MetadataValue.int(result.left),
        "came_back_this_run": dg.MetadataValue.int(result.came_back),
        "booked_this_run": dg.MetadataValue.int(result.booked),
        "stages": dg.MetadataValue.md("\n".join(lines)),
    }
    for stage in counts.stages:
        meta[f"stage: {stage}"] = dg.MetadataValue.int(counts.active.get(stage, 0))
    if result.frozen:
        meta["note"] = dg.MetadataValue.text("snapshot segment: membership frozen")
    if result.reused:
        meta["sync"] = dg.MetadataValue.text("not run: inputs unchanged since its last one")
    return meta


def build_worklist_asset(
    info: WorkListInfo, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    deps = [dg.AssetKey(["segments", info.segment_slug])]
    if info.spec.on_booking:
        deps.append(dg.AssetKey(["marts", "appointments"]))
    stages = " → ".join(info.spec.stages)

    @dg.asset(
        key=dg.AssetKey(["worklists", info.slug]),
        deps=deps,
        group_name="workflow",
        description=f"Work list over segment `{info.segment_slug}`: {stages}.",
        kinds={"python"},
        tags={"visibility": info.visibility},
        partitions_def=partitions,
    )
    def worklist_asset(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
    ) -> dg.MaterializeResult:
        as_of = as_of_day(context)
        # What the segment's membership of the day was evaluated from (None: not known, so
        # the list is synced); with the spec and the day, what this sync is made from.
        with warehouse.connect(read_only=True) as con:
            inputs = evaluated_from(con, info.segment_slug, as_of)
        try:
            result = materialize_worklist(
                info,
                duckdb_path=warehouse.duckdb_path,
                state_db_url=state_store.url,
                clinic_timezone=settings.clinic_timezone,
                as_of=as_of,
                inputs=inputs,
            )
        except LookupError as err:
            # The segment has no membership of this day (WrongDay): never sync another's.
            raise dg.Failure(description=str(err)) from None
        if result.reused:
            context.log.info(f"{PROGRESS}not synced again: its last complete sync was made "
                             "from the same segment evaluation, day and spec")  # fmt: skip
        # Counts only: member ids stay in the state store, names never leave the warehouse.
        context.log.info(
            f"{info.slug}: entered {result.entered}, left {result.left}, "
            f"came back {result.came_back}, booked {result.booked}"
        )
        return dg.MaterializeResult(metadata=_metadata(info, result))

    return worklist_asset


def build_broken_worklist_asset(
    slug: str, problem: str, partitions: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    """A work list whose definition does not load: its asset fails with the problem, so
    one bad file does not take the other work lists (or the code location) down."""

    @dg.asset(
        key=dg.AssetKey(["worklists", slug]),
        group_name="workflow",
        description=f"Work list {slug!r} (its definition has a problem).",
        kinds={"python"},
        partitions_def=partitions,
    )
    def broken_worklist() -> None:
        raise dg.Failure(description=problem)

    return broken_worklist


def build_workflow_defs(
    worklists: Iterable[WorkListInfo],
    problems: dict[str, str] | None = None,
    partitions: dg.PartitionsDefinition | None = None,
) -> dg.Definitions:
    partitions = partitions or daily_partitions()
    assets = [build_worklist_asset(info, partitions) for info in worklists]
    assets += [build_broken_worklist_asset(key_part(s), p, partitions)
               for s, p in sorted((problems or {}).items())]  # fmt: skip
    return dg.Definitions(assets=assets)
