"""The one Dagster code location, assembled in one place from the product's settings.

`build_definitions(settings)` builds every stage (ingest, dbt, segments, work lists,
outbound) for the clinic's daily partitions and binds the resources made from the same
settings. Nothing is built at import: Dagster calls `defs()` when it loads the code
location (dbt's manifest is parsed then, if it is stale). Warehouse writers share one
DuckDB file, which allows a single writer, so the code location runs every step in one
process.
"""

from __future__ import annotations

import warnings

import dagster as dg

from core.settings import Settings
from orchestration.dbt import build_dbt_defs
from orchestration.ingest import build_ingest_assets
from orchestration.outbound import build_outbound_defs
from orchestration.resources import daily_partitions, resources_for, settings_from_env
from orchestration.schedules import daily_schedule, everything_job
from orchestration.segments import build_segment_defs
from orchestration.sensors import new_extract_folder_sensor
from orchestration.workflow import build_workflow_defs


def build_definitions(
    settings: Settings | None = None,
    resources: dict[str, object] | None = None,
    loggers: dict[str, dg.LoggerDefinition] | None = None,
) -> dg.Definitions:
    """Every asset, check, job, schedule and sensor for `settings` (default: from the
    environment), with `resources` (default: made from the same settings)."""
    from outbound.run import OutboundSettings
    from segments.library import library_folders
    from workflow.worklist_files import read_worklists

    settings = settings or settings_from_env()
    partitions = daily_partitions(settings.clinic_timezone)
    worklists = read_worklists(library_folders(settings.segments_path), settings.worklists_path)
    job = everything_job(partitions)
    stages = [
        dg.Definitions(assets=build_ingest_assets(partitions)),
        build_dbt_defs(partitions),
        build_segment_defs(settings.segments_path, partitions),
        build_workflow_defs(worklists.lists.values(), worklists.problems, partitions),
        build_outbound_defs(OutboundSettings.of(settings), partitions),
    ]
    shared = dg.Definitions(
        resources=resources if resources is not None else resources_for(settings),
        jobs=[job],
        schedules=[daily_schedule(job, settings.clinic_timezone)],
        sensors=[new_extract_folder_sensor],
        executor=dg.in_process_executor,
        loggers=loggers,
    )
    # Every asset runs one day per run; Dagster notes that only the dbt assets say so.
    warnings.filterwarnings("ignore", message=r"Asset job .* varying BackfillPolicies")
    return dg.Definitions.merge(*stages, shared)


@dg.definitions
def defs() -> dg.Definitions:
    """What `dagster dev -w workspace.yaml` loads."""
    return build_definitions()


__all__ = ["build_definitions", "defs"]
