"""One materialisation of a work list: read the warehouse, sync the state store."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.days import parse_as_of
from segments.workflow_block import WorkListInfo
from workflow.api import SyncResult, sync_worklist
from workflow.store import open_state
from workflow.warehouse_reads import read_latest_bookings, read_segment_members


def materialize_worklist(
    info: WorkListInfo,
    duckdb_path: str | Path,
    state_db_url: str,
    clinic_timezone: str = "UTC",
    as_of: str | date | None = None,
    now: datetime | None = None,
) -> SyncResult:
    """Sync `info` with its segment's current members and, with `on_booking`, bookings."""
    day = parse_as_of(as_of, clinic_timezone)
    current = read_segment_members(duckdb_path, info.segment_slug, info.entity, day)
    bookings = None
    if info.spec.on_booking:
        bookings = read_latest_bookings(duckdb_path, day, clinic_timezone)
    engine = open_state(state_db_url)
    try:
        taken = (
            segment_snapshot_taken_at(engine, info.segment_slug)
            if info.mode == "snapshot"
            else None
        )
        return sync_worklist(engine, info, current, bookings, now=now, snapshot_taken_at=taken)
    finally:
        engine.dispose()


def segment_snapshot_taken_at(engine: Engine, segment_slug: str) -> datetime | None:
    """When the segments stage last froze this snapshot segment's list (same state store).

    None when the segments stage has not recorded one (or is not installed): the work list
    then keeps the list it took first.
    """
    try:
        from segments.snapshots import snapshot_runs
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("segments"):
            return None
        raise
    if not sa.inspect(engine).has_table(snapshot_runs.name):
        return None
    with engine.connect() as conn:
        taken = conn.execute(
            sa.select(snapshot_runs.c.snapshotted_at).where(
                snapshot_runs.c.segment_slug == segment_slug
            )
        ).scalar()
    if taken is None:
        return None
    # SQLite hands timestamps back without their offset; they are stored in UTC.
    return taken if taken.tzinfo else taken.replace(tzinfo=UTC)
