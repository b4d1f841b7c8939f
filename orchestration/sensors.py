"""A sensor that starts a run when a new dated extract folder appears."""

from datetime import date
from pathlib import Path

import dagster as dg

from orchestration.ingest import EXTRACTS_TAG, latest_dated_folder
from orchestration.resources import PARTITIONS_START, ClinicSettingsResource, daily_partitions
from orchestration.schedules import DAILY_JOB


@dg.sensor(
    job_name=DAILY_JOB,
    minimum_interval_seconds=60,
    description="Watches EXTRACTS_ROOT for a new YYYY-MM-DD folder and runs that day's "
    "partition on it, once.",
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def new_extract_folder_sensor(
    context: dg.SensorEvaluationContext, settings: ClinicSettingsResource
):
    # The newest folder of a day that has a partition: up to today in the clinic's time
    # zone (a folder dated later waits for its day, and does not hold today's back).
    partitions = daily_partitions(settings.clinic_timezone)
    today = date.fromisoformat(partitions.get_last_partition_key())
    latest = latest_dated_folder(Path(settings.extracts_root), today)
    if latest is None or latest.name < PARTITIONS_START:
        return dg.SkipReason(f"no YYYY-MM-DD folder dated from {PARTITIONS_START} to {today} "
                             f"under {settings.extracts_root} yet")  # fmt: skip
    if context.cursor is not None and latest.name <= context.cursor:
        return dg.SkipReason(f"{latest.name} was already picked up")
    context.update_cursor(latest.name)
    # The folder's date is the as-of day of the extract it holds: its partition.
    return dg.RunRequest(
        run_key=latest.name, partition_key=latest.name, tags={EXTRACTS_TAG: str(latest)}
    )
