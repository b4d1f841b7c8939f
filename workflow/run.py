"""One materialisation of a work list: read the warehouse, sync the state store."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.days import parse_as_of
from segments.workflow_block import WorkListInfo
from workflow.api import SyncResult, stage_counts, sync_worklist
from workflow.store import open_state, sync_inputs
from workflow.warehouse_reads import read_latest_bookings, read_segment_members


def materialize_worklist(
    info: WorkListInfo,
    duckdb_path: str | Path,
    state_db_url: str,
    clinic_timezone: str = "UTC",
    as_of: str | date | None = None,
    now: datetime | None = None,
    inputs: str | None = None,
) -> SyncResult:
    """Sync `info` with its segment's current members and, with `on_booking`, bookings.

    `inputs`: a digest of what this sync is made from (the caller's: the segment's
    evaluation, the day, the spec). When the list's last complete sync was made from the
    same, syncing again would change nothing, and it is not done (`reused`). The inputs
    are recorded once the sync has completed: every planned booking move made or found
    unnecessary on the member's fresh row (one that keeps racing with staff raises, and
    leaves no record)."""
    day = parse_as_of(as_of, clinic_timezone)
    engine = open_state(state_db_url)
    try:
        taken = (
            segment_snapshot_taken_at(engine, info.segment_slug)
            if info.mode == "snapshot"
            else None
        )
        if inputs is not None:
            inputs = _digest(inputs, info, day, taken)
            with engine.begin() as conn:
                last = conn.execute(sa.select(sync_inputs.c.inputs).where(
                    sync_inputs.c.worklist_slug == info.slug)).scalar()  # fmt: skip
                if last == inputs:
                    return SyncResult(counts=stage_counts(engine, info, info.owner), reused=True)
                conn.execute(sync_inputs.delete().where(sync_inputs.c.worklist_slug == info.slug))
        # A list that follows bookings reads them on a thread while it reads its members
        # (DuckDB lets go of the GIL while it scans the appointments).
        with ThreadPoolExecutor(max_workers=1) as pool:
            reading = (pool.submit(read_latest_bookings, duckdb_path, day, clinic_timezone)
                       if info.spec.on_booking else None)  # fmt: skip
            current = read_segment_members(duckdb_path, info.segment_slug, info.entity, day)
            bookings = reading.result() if reading is not None else None
        result = sync_worklist(engine, info, current, bookings, now=now, snapshot_taken_at=taken)
        if inputs is not None:
            with engine.begin() as conn:
                conn.execute(sync_inputs.insert().values(
                    worklist_slug=info.slug, inputs=inputs, synced_at=datetime.now(UTC)
                ))  # fmt: skip
        return result
    finally:
        engine.dispose()


def _digest(inputs: str, info: WorkListInfo, day: date, taken: datetime | None) -> str:
    payload = json.dumps([inputs, info.model_dump_json(), day.isoformat(),
                          taken.isoformat() if taken else None, _workflow_code()])  # fmt: skip
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


@cache
def _workflow_code() -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


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
