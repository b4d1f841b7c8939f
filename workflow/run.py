"""One materialisation of a work list: read the warehouse, sync the state store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from clinic_audiences.config import parse_as_of
from workflow.api import SyncResult, sync_worklist
from workflow.spec import WorkListInfo
from workflow.store import open_state
from workflow.warehouse import read_latest_bookings, read_segment_members


def materialize_worklist(
    info: WorkListInfo,
    duckdb_path: str | Path,
    state_db_url: str,
    clinic_timezone: str = "UTC",
    as_of: str | None = None,
    now: datetime | None = None,
) -> SyncResult:
    """Sync `info` with its segment's current members and, with `on_booking`, bookings."""
    current = read_segment_members(duckdb_path, info.segment_slug, info.entity)
    bookings = None
    if info.spec.on_booking:
        bookings = read_latest_bookings(
            duckdb_path, parse_as_of(as_of, clinic_timezone), clinic_timezone
        )
    engine = open_state(state_db_url)
    try:
        return sync_worklist(engine, info, current, bookings, now=now)
    finally:
        engine.dispose()
