"""A sensor that starts a run when a new dated extract folder appears."""

from pathlib import Path

import dagster as dg

from orchestration.ingest import AS_OF_TAG, EXTRACTS_TAG, latest_dated_folder
from orchestration.resources import ClinicSettingsResource
from orchestration.schedules import everything_job


@dg.sensor(
    job=everything_job,
    minimum_interval_seconds=60,
    description="Watches EXTRACTS_ROOT for a new YYYY-MM-DD folder and ingests it once.",
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
    context.update_cursor(latest.name)
    # The folder's date is the as-of date of the extract it holds.
    return dg.RunRequest(
        run_key=latest.name,
        tags={EXTRACTS_TAG: str(latest), AS_OF_TAG: latest.name},
    )
