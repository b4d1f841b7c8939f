"""The one Dagster code location: merges the Definitions of each stage module.

Each stage module (ingest, dbt, segments, workflow, outbound) exposes `defs` with its
assets and checks; this file only adds the shared resources, the schedule and the
sensor. Warehouse writers share one DuckDB file, which allows a single writer, so the
code location runs every step in one process.
"""

from __future__ import annotations

import dagster as dg

from orchestration import dbt as dbt_stage
from orchestration import ingest
from orchestration import outbound as outbound_stage
from orchestration import segments as segments_stage
from orchestration import workflow as workflow_stage
from orchestration.resources import resources_from_env
from orchestration.schedules import daily_schedule, everything_job
from orchestration.sensors import new_extract_folder_sensor

STAGES: list[dg.Definitions] = [
    ingest.defs,
    dbt_stage.defs,
    segments_stage.defs,
    workflow_stage.defs,
    outbound_stage.defs,
]


def build_definitions(
    resources: dict[str, object] | None = None,
    loggers: dict[str, dg.LoggerDefinition] | None = None,
) -> dg.Definitions:
    shared = dg.Definitions(
        resources=resources if resources is not None else resources_from_env(),
        jobs=[everything_job],
        schedules=[daily_schedule],
        sensors=[new_extract_folder_sensor],
        executor=dg.in_process_executor,
        loggers=loggers,
    )
    return dg.Definitions.merge(*STAGES, shared)


defs = build_definitions()
