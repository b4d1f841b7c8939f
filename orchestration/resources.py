"""The resources every asset uses, and the one place they are made from the environment.

`resources_for(settings)` turns the product's `Settings` into Dagster resources;
`settings_from_env()` is the only reader of the process environment (with the CLI). A
test or another deployment passes its own resources instead: the assets never look
anything up for themselves.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from functools import cache
from pathlib import Path

import dagster as dg
import duckdb
from sqlalchemy.engine import Engine

from core.run_lock import hold_warehouse
from core.settings import (
    DEFAULT_DUCKDB_PATH,
    DEFAULT_EXTRACTS_ROOT,
    DEFAULT_MAX_DROP,
    DEFAULT_SENDGRID_HOST,
    DEFAULT_STATE_DB_URL,
    DEFAULT_TWILIO_BASE_URL,
    SenderAccess,
    Settings,
    TwilioAccess,
)
from core.warehouse import connect


def settings_from_env() -> Settings:
    """The settings of this process, from its environment variables."""
    return Settings.from_environ(os.environ)


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (`DUCKDB_PATH`, `DUCKDB_MEMORY_LIMIT`).

    A run holds the warehouse from its first step to its last (the code location runs every
    step in one process): a second run on the same file stops at once, naming the first.
    Readers open short-lived read-only connections.
    """

    duckdb_path: str = DEFAULT_DUCKDB_PATH
    memory_limit: str = ""

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[WarehouseResource]:
        run = context.run_id or "a run"
        with hold_warehouse(self.duckdb_path, f"Dagster run {run}"):
            yield self

    @contextmanager
    def connect(
        self, read_only: bool = False, default_memory: str | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection capped at `DUCKDB_MEMORY_LIMIT`, else at the step's own
        `default_memory`, else at DuckDB's default (80% of RAM)."""
        with connect(self.duckdb_path, read_only=read_only,
                     memory_limit=self.memory_limit or default_memory) as con:  # fmt: skip
            yield con


class StateStoreResource(dg.ConfigurableResource):
    """The operational state store (`STATE_DB_URL`): SQLite or PostgreSQL. Its migrations
    run once per process, the first time an asset asks for it."""

    url: str = DEFAULT_STATE_DB_URL

    def engine(self) -> Engine:
        return _migrated_engine(self.url)


@cache
def _migrated_engine(url: str) -> Engine:
    # Importing the components registers their migrations.
    import outbound.ledger  # noqa: F401
    import outbound.pauses  # noqa: F401
    import segments.snapshots  # noqa: F401
    import workflow.store  # noqa: F401
    from core.state_store import connect_state, migrate

    engine = connect_state(url)
    migrate(engine)
    return engine


class SegmentLibraryResource(dg.ConfigurableResource):
    """Where segment definitions live: the shipped library and `SEGMENTS_PATH`."""

    segments_path: str = ""

    def folders(self) -> list[Path]:
        from segments.library import library_folders

        return library_folders(Path(self.segments_path) if self.segments_path else None)


class SendGridResource(dg.ConfigurableResource):
    """SendGrid (`SENDGRID_API_KEY`, `SENDGRID_API_HOST`, `OUTBOUND_FROM_*`). Without a
    key, or with `disabled`, sending is a dry run."""

    api_key: str = ""
    host: str = DEFAULT_SENDGRID_HOST
    from_email: str = ""
    from_name: str = ""
    sandbox: bool = False
    disabled: bool = False

    def access(self) -> SenderAccess:
        return SenderAccess(
            api_key=self.api_key or None, host=self.host, from_email=self.from_email or None,
            from_name=self.from_name or None, sandbox=self.sandbox, disabled=self.disabled,
        )  # fmt: skip


class TwilioResource(dg.ConfigurableResource):
    """Twilio (`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`, `TWILIO_MESSAGING_SERVICE_SID` or
    `TWILIO_FROM_NUMBER`, `TWILIO_API_BASE_URL`). Without an account, SMS is a dry run."""

    account_sid: str = ""
    auth_token: str = ""
    messaging_service_sid: str = ""
    from_number: str = ""
    base_url: str = DEFAULT_TWILIO_BASE_URL
    disabled: bool = False
    whatsapp_from: str = ""

    def access(self) -> TwilioAccess:
        return TwilioAccess(
            account_sid=self.account_sid or None, auth_token=self.auth_token or None,
            messaging_service_sid=self.messaging_service_sid or None,
            from_number=self.from_number or None, base_url=self.base_url,
            disabled=self.disabled, whatsapp_from=self.whatsapp_from or None,
        )  # fmt: skip


class ClinicSettingsResource(dg.ConfigurableResource):
    """Run-wide settings: the clinic's time zone, where extracts and definitions live, the
    extract guard and the frequency cap."""

    clinic_timezone: str = "UTC"
    extracts_dir: str = ""
    extract_format: str = "csv"
    extracts_root: str = DEFAULT_EXTRACTS_ROOT
    ingest_max_drop: float = DEFAULT_MAX_DROP
    worklists_path: str = ""
    campaigns_path: str = ""
    cap_max_messages: int = 1
    cap_window_days: int = 7
    # HH:MM clinic time outbound plans are made at (reproducible dry runs); empty: now.
    outbound_run_time: str = ""
    # What patients' messages carry: the clinic's name (commercial SMS), the country
    # numbers are read in and whose hours commercial SMS keeps, and the web app's address
    # and secret for unsubscribe links and delivery reports.
    clinic_name: str = ""
    clinic_country: str = "AU"
    recipient_hours: str = ""
    web_app_url: str = ""
    unsubscribe_secret: str = ""
    sendgrid_group_ids: str = ""
    tasks_webhook_url: str = ""
    tasks_webhook_secret: str = ""


def resources_for(settings: Settings, **overrides: str) -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location for these settings (`overrides`: fields of the
    clinic settings resource, e.g. the extract folder a CLI run reads)."""
    s, sender = settings, settings.sender
    return {
        "warehouse": WarehouseResource(
            duckdb_path=str(s.duckdb_path), memory_limit=s.duckdb_memory_limit or ""
        ),
        "state_store": StateStoreResource(url=s.state_db_url),
        "segment_library": SegmentLibraryResource(segments_path=str(s.segments_path or "")),
        "sendgrid": SendGridResource(
            api_key=sender.api_key or "", host=sender.host, from_email=sender.from_email or "",
            from_name=sender.from_name or "", sandbox=sender.sandbox, disabled=sender.disabled,
        ),  # fmt: skip
        "twilio": TwilioResource(
            account_sid=s.twilio.account_sid or "", auth_token=s.twilio.auth_token or "",
            messaging_service_sid=s.twilio.messaging_service_sid or "",
            from_number=s.twilio.from_number or "", base_url=s.twilio.base_url,
            disabled=s.twilio.disabled, whatsapp_from=s.twilio.whatsapp_from or "",
        ),  # fmt: skip
        "settings": ClinicSettingsResource(
            **{
                "clinic_timezone": s.clinic_timezone,
                "extracts_root": str(s.extracts_root),
                "ingest_max_drop": s.ingest_max_drop,
                "worklists_path": str(s.worklists_path or ""),
                "campaigns_path": str(s.campaigns_path or ""),
                "cap_max_messages": s.cap_max_messages,
                "cap_window_days": s.cap_window_days,
                "outbound_run_time": s.outbound_run_time or "",
                "clinic_name": s.clinic_name or "",
                "clinic_country": s.clinic_country,
                "recipient_hours": s.recipient_hours or "",
                "web_app_url": s.web_app_url or "",
                "unsubscribe_secret": s.unsubscribe_secret or "",
                "sendgrid_group_ids": s.sendgrid_group_ids or "",
                "tasks_webhook_url": s.tasks_webhook_url or "",
                "tasks_webhook_secret": s.tasks_webhook_secret or "",
                **overrides,
            }
        ),
    }


# -- the as-of day as a partition ---------------------------------------------------------

# The first day a partition exists for: far enough back for any clinic's history.
# A step's log line that reports its progress (rows, rates, time left) starts with this;
# `audiences run` prints such lines under the step, without it.
PROGRESS = "progress: "

PARTITIONS_START = "2010-01-01"
DAY_FORMAT = "%Y-%m-%d"


# Each day is its own run (a backfill of N days is N runs): a day's membership and work
# lists follow from the day before, and the warehouse holds one day at a time.
ONE_RUN_PER_DAY = dg.BackfillPolicy.multi_run(1)


def daily_partitions(timezone: str = "UTC") -> dg.DailyPartitionsDefinition:
    """One partition per as-of day in the clinic's time zone, up to and including today
    (`end_offset=1`: the partition of a day exists from its first minute, as a daily run
    is for the day it runs on)."""
    return dg.DailyPartitionsDefinition(
        start_date=PARTITIONS_START, timezone=timezone, end_offset=1, fmt=DAY_FORMAT
    )


def as_of_day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    """The as-of day of a step: its partition."""
    key = None
    if isinstance(context, dg.AssetCheckExecutionContext):
        key = context.op_execution_context.partition_key if (
            context.op_execution_context.has_partition_key) else None
    elif context.has_partition_key:
        key = context.partition_key
    if key is None:
        raise dg.Failure(
            description="this step is computed for one as-of day: materialise one partition "
            "(`audiences run --as-of YYYY-MM-DD`, or pick the day in the Dagster UI)"
        )
    return date.fromisoformat(key)


_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")


def key_part(name: str) -> str:
    """`name` as one part of an asset key. A name Dagster cannot carry (a file named with a
    space or an accent) becomes `invalid-<name, other characters as _>-<hash>`, so its asset
    can still exist and fail with the file's problem instead of stopping every definition."""
    if _KEY_PART.match(name):
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"invalid-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}-{digest}"
