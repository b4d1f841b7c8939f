"""Snapshot lists in the state store (docs/architecture.md): operational state, never
rebuilt. A snapshot segment's members are frozen on its first run and stay until it is
re-snapshotted on purpose.

Kept apart from the warehouse side so that commands that never touch the state store
(validate, preview) do not load SQLAlchemy.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, connect_state, migrate, register_migrations

state_meta = sa.MetaData()
snapshot_runs = sa.Table(
    "segment_snapshot_runs",
    state_meta,
    sa.Column("segment_slug", sa.String(200), primary_key=True),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("snapshotted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("member_count", sa.Integer, nullable=False),
)
snapshots = sa.Table(
    "segment_snapshots",
    state_meta,
    sa.Column("segment_slug", sa.String(200), nullable=False, index=True),
    sa.Column("patient_id", sa.String(200), nullable=False),
    sa.Column("case_id", sa.String(200), nullable=True),
    sa.Column("snapshotted_at", sa.DateTime(timezone=True), nullable=False),
)


def _create_snapshot_tables(conn: Connection) -> None:
    state_meta.create_all(conn)


register_migrations(
    "segments",
    [Migration(1, "segment snapshot lists and their runs", _create_snapshot_tables)],
)


def load_snapshot(engine: Engine, slug: str) -> pl.DataFrame | None:
    """The frozen members of a snapshot segment, or None if it was never snapshotted.

    An empty frame is a snapshot with no members, which stays empty until re-snapshotted.
    """
    with engine.connect() as conn:
        run = conn.execute(
            sa.select(snapshot_runs.c.segment_slug).where(snapshot_runs.c.segment_slug == slug)
        ).first()
        if run is None:
            return None
        rows = conn.execute(
            sa.select(snapshots.c.patient_id, snapshots.c.case_id).where(
                snapshots.c.segment_slug == slug
            )
        ).all()
    return pl.DataFrame(
        {"patient_id": [r[0] for r in rows], "case_id": [r[1] for r in rows]},
        schema={"patient_id": pl.String, "case_id": pl.String},
    ).sort("patient_id", "case_id")


def save_snapshot(engine: Engine, slug: str, members: pl.DataFrame, as_of: date) -> None:
    """Freeze `members` as the segment's list, replacing any earlier snapshot in one go."""
    now = datetime.now(UTC)
    rows = [
        {"segment_slug": slug, "patient_id": p, "case_id": c, "snapshotted_at": now}
        for p, c in members.select("patient_id", "case_id").iter_rows()
    ]
    with engine.begin() as conn:
        conn.execute(sa.delete(snapshots).where(snapshots.c.segment_slug == slug))
        conn.execute(sa.delete(snapshot_runs).where(snapshot_runs.c.segment_slug == slug))
        if rows:
            conn.execute(snapshots.insert(), rows)
        conn.execute(
            snapshot_runs.insert().values(
                segment_slug=slug, as_of=as_of, snapshotted_at=now, member_count=len(rows)
            )
        )


def state_engine(state_db_url: str) -> Engine:
    """The state store with the segment tables migrated."""
    engine = connect_state(state_db_url)
    migrate(engine, ["segments"])
    return engine
