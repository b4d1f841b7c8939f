"""A sensor that starts a run when a new dated extract folder appears."""

from pathlib import Path

import dagster as dg

from orchestration.ingest import EXTRACTS_TAG, latest_dated_folder
from orchestration.resources import ClinicSettingsResource, daily_partitions
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
    latest = latest_dated_folder(Path(settings.extracts_root))
    if latest is None:
        return dg.SkipReason(f"no YYYY-MM-DD folder under {settings.extracts_root} yet")
    if context.cursor == latest.name:
        return dg.SkipReason(f"{latest.name} was already picked up")
    today = daily_partitions(settings.clinic_timezone).get_last_partition_key()
    if today is not None and latest.name > today:
        return dg.SkipReason(
            f"{latest.name} is after today ({today} in {settings.clinic_timezone}); it is "
            "run when its day begins"
        )
    context.update_cursor(latest.name)
    # The folder's date is the as-of day of the extract it holds: its partition.
    return dg.RunRequest(
        run_key=latest.name, partition_key=latest.name, tags={EXTRACTS_TAG: str(latest)}
    )
