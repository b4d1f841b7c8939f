"""The daily schedule: materialise everything from the newest extract folder."""

import dagster as dg

everything_job = dg.define_asset_job(
    "daily_refresh",
    selection=dg.AssetSelection.all(),
    description="Ingest the newest extract, rebuild the warehouse, segments and outbound plan.",
)

daily_schedule = dg.ScheduleDefinition(
    name="daily_refresh_schedule",
    job=everything_job,
    cron_schedule="0 5 * * *",
    execution_timezone="UTC",
    description="Every day at 05:00 UTC (set CLINIC_TIMEZONE for the clinic's as-of date).",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
