"""Workflow tables in the state store (component `workflow`).

- `workflow_lists`: one row per work list that has been synced (its spec as last seen,
  when it was first and last synced) so that snapshot lists know they are frozen and the
  CLI can still show a list whose definition was removed.
- `workflow_members`: one row per (work list, member) with the current stage, assignee,
  due date, last touch and a `version` that every change bumps (compare-and-set).
- `workflow_events`: append-only; every change with who, when, from stage, to stage, note.
- `workflow_sync_inputs`: what a work list's last complete sync was made from (see
  `workflow.run.materialize_worklist`), so that a rerun of the day need not sync again.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.state_store import (
    Migration,
    UTCDateTime,
    connect_state,
    migrate,
    register_migrations,
)

COMPONENT = "workflow"


metadata = sa.MetaData()

lists = sa.Table(
    "workflow_lists",
    metadata,
    sa.Column("slug", sa.String(200), primary_key=True),
    sa.Column("segment_slug", sa.String(200), nullable=False),
    sa.Column("owner", sa.String(320)),
    sa.Column("visibility", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("entity", sa.String(16), nullable=False),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("first_synced_at", UTCDateTime, nullable=False),
    sa.Column("last_synced_at", UTCDateTime, nullable=False),
    # For snapshot segments: when the segment's list that this work list follows was
    # frozen; a later (deliberate) re-snapshot lets the work list take the new list.
    sa.Column("snapshot_at", UTCDateTime),
)

members = sa.Table(
    "workflow_members",
    metadata,
    sa.Column("worklist_slug", sa.String(200), primary_key=True),
    # The patient id for patient lists, the case id for case lists.
    sa.Column("member_id", sa.String(200), primary_key=True),
    sa.Column("patient_id", sa.String(200), nullable=False),
    sa.Column("case_id", sa.String(200)),
    sa.Column("stage", sa.String(200), nullable=False),
    sa.Column("assignee", sa.String(320)),
    sa.Column("due_date", sa.Date),
    sa.Column("entered_at", UTCDateTime, nullable=False),
    sa.Column("stage_since", UTCDateTime, nullable=False),
    sa.Column("last_touch_at", UTCDateTime),
    sa.Column("last_touch_by", sa.String(320)),
    sa.Column("left_segment", sa.Boolean, nullable=False, default=False),
    sa.Column("left_at", UTCDateTime),
    # Creation time of the booking that last moved this member automatically, so that
    # each booking moves a member at most once and a later staff decision sticks.
    sa.Column("booking_seen_at", UTCDateTime),
    # Bumped by every change; writers update only when it still holds the value they read.
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("ix_workflow_members_stage", "worklist_slug", "stage"),
    # Counts per stage (every board, every sync) read this index alone, not the rows.
    sa.Index("ix_workflow_members_stage_left", "worklist_slug", "stage", "left_segment"),
)

events = sa.Table(
    "workflow_events",
    metadata,
    sa.Column("event_id", sa.Integer, sa.Identity(), primary_key=True),
    sa.Column("worklist_slug", sa.String(200), nullable=False),
    sa.Column("member_id", sa.String(200), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("actor", sa.String(320), nullable=False),
    # entered | moved | assigned | note | due | left_segment | returned
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("from_stage", sa.String(200)),
    sa.Column("to_stage", sa.String(200)),
    sa.Column("assignee", sa.String(320)),
    sa.Column("note", sa.Text),
    # The member row's version this event produced: history order within a member.
    sa.Column("member_version", sa.Integer, nullable=False),
    # Two writers can never both record the same change of a member.
    sa.UniqueConstraint("worklist_slug", "member_id", "member_version"),
)


sync_inputs = sa.Table(
    "workflow_sync_inputs",
    metadata,
    sa.Column("worklist_slug", sa.String(200), primary_key=True),
    sa.Column("inputs", sa.String(64), nullable=False),
    sa.Column("synced_at", UTCDateTime, nullable=False),
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[lists, members, events])


def _add_snapshot_at(conn: Connection) -> None:
    # Version 1 creates tables from the current definitions, so a new database already
    # has the column; only databases created before it need the ALTER.
    have = {c["name"] for c in sa.inspect(conn).get_columns("workflow_lists")}
    if "snapshot_at" not in have:
        kind = sa.DateTime(timezone=True).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"alter table workflow_lists add column snapshot_at {kind}"))


def _add_stage_count_index(conn: Connection) -> None:
    # As with version 2: a database created from the current definitions has it already.
    next(i for i in members.indexes if i.name == "ix_workflow_members_stage_left").create(
        conn, checkfirst=True)  # fmt: skip


register_migrations(
    COMPONENT,
    [
        Migration(1, "work lists, member stages and the append-only event log", _create_v1),
        Migration(2, "follow deliberate re-snapshots of snapshot segments", _add_snapshot_at),
        Migration(3, "an index that counts members per stage", _add_stage_count_index),
        Migration(4, "what each work list's last complete sync was made from",
                  lambda conn: sync_inputs.create(conn, checkfirst=True)),
    ],
)


def open_state(url: str) -> Engine:
    """An engine on the state store with the workflow tables migrated."""
    engine = connect_state(url)
    migrate(engine, [COMPONENT])
    return engine
