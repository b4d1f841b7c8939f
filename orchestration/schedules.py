"""Schedules: each run asks for the partition of the clinic's current day."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import dagster as dg

DAILY_JOB = "daily_refresh"


def everything_job(partitions: dg.PartitionsDefinition) -> dg.UnresolvedAssetJobDefinition:
    """Every asset for one day. Backfills run one day per run: Dagster's default for daily
    partitions, and the dbt assets' declared policy (see orchestration/dbt.py)."""
    return dg.define_asset_job(
        DAILY_JOB,
        selection=dg.AssetSelection.all(),
        partitions_def=partitions,
        description="For one as-of day: ingest the extract, build the warehouse, segments, "
        "work lists and the outbound plan.",
    )


def todays_partition_schedule(
    name: str, job, cron: str, timezone: str, description: str  # noqa: ANN001
) -> dg.ScheduleDefinition:
    """A schedule on the clinic's clock whose every tick runs the partition of that day."""
    zone = ZoneInfo(timezone)

    @dg.schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone=timezone,
        description=description,
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        at = context.scheduled_execution_time.astimezone(zone)
        day = at.date().isoformat()
        return dg.RunRequest(run_key=f"{name}-{at.isoformat()}", partition_key=day)

    return _schedule


def daily_schedule(job, timezone: str) -> dg.ScheduleDefinition:  # noqa: ANN001
    return todays_partition_schedule(
        "daily_refresh_schedule", job, "0 5 * * *", timezone,
        "Every day at 05:00 clinic time (CLINIC_TIMEZONE), for that day's partition.",
    )  # fmt: skip
