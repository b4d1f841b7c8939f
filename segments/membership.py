"""Where segment results go: `segments.membership` / `segments.membership_history` in the
warehouse, and snapshot lists in the state store.

The warehouse tables live in schema `segments`, which dbt never touches, so they survive
rebuilds of the marts. Membership history keeps one row per continuous membership: a
member who enters, stays, exits and re-enters has two intervals. `exited_on` is the as-of
date of the first run that no longer found the member; an open interval has none.

Snapshot lists are operational state and live in the state store (`segments.snapshots`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

import duckdb
import polars as pl

MEMBER_KEYS = ("patient_id", "case_id")

_WAREHOUSE_DDL = (
    "create schema if not exists segments",
    "create table if not exists segments.membership ("
    " segment_slug varchar not null, patient_id varchar not null, case_id varchar,"
    " as_of date not null, entered_at date not null)",
    "create table if not exists segments.membership_history ("
    " segment_slug varchar not null, patient_id varchar not null, case_id varchar,"
    " entered_on date not null, exited_on date)",
    # One row per materialisation: tells "ran and found nobody" from "never ran".
    "create table if not exists segments.segment_runs ("
    " segment_slug varchar not null, as_of date not null, members bigint not null,"
    " entered bigint not null, exited bigint not null, recorded_at timestamptz not null)",
)


@dataclass(frozen=True)
class MembershipChange:
    members: int
    entered: int
    exited: int
    previous_as_of: date | None


def ensure_membership_tables(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in _WAREHOUSE_DDL:
        con.execute(ddl)


# Null-safe key match: patient segments have no case_id.
_SAME_MEMBER = "a.patient_id = b.patient_id and a.case_id is not distinct from b.case_id"


def record_membership(
    con: duckdb.DuckDBPyConnection, slug: str, members: pl.DataFrame, as_of: date
) -> MembershipChange:
    """Replace a segment's membership with `members` and extend its history, atomically.

    Values travel as parameters and as a registered frame, never as SQL text.
    """
    ensure_membership_tables(con)
    current = members.select(
        pl.col("patient_id").cast(pl.String), pl.col("case_id").cast(pl.String)
    ).unique()
    con.register("segment_members_now", current.to_arrow())
    try:
        con.execute("begin transaction")
        prev_as_of = con.execute(
            "select max(as_of) from segments.segment_runs where segment_slug = ?", [slug]
        ).fetchall()[0][0]
        con.execute(
            "create or replace temp table segment_members_before as "
            "select patient_id, case_id, entered_at from segments.membership "
            "where segment_slug = ?",
            [slug],
        )
        entered = con.execute(
            "select count(*) from segment_members_now a where not exists ("
            f"select 1 from segment_members_before b where {_SAME_MEMBER})"
        ).fetchall()[0][0]
        exited = con.execute(
            "select count(*) from segment_members_before a where not exists ("
            f"select 1 from segment_members_now b where {_SAME_MEMBER})"
        ).fetchall()[0][0]
        # Close the open interval of everyone who left.
        con.execute(
            "update segments.membership_history as a set exited_on = ? "
            "where a.segment_slug = ? and a.exited_on is null and not exists ("
            f"select 1 from segment_members_now b where {_SAME_MEMBER})",
            [as_of, slug],
        )
        # Open an interval for everyone who has none open (new, or back again).
        con.execute(
            "insert into segments.membership_history "
            "select ?, a.patient_id, a.case_id, ?, null from segment_members_now a "
            "where not exists (select 1 from segments.membership_history b "
            f"where b.segment_slug = ? and b.exited_on is null and {_SAME_MEMBER})",
            [slug, as_of, slug],
        )
        con.execute("delete from segments.membership where segment_slug = ?", [slug])
        con.execute(
            "insert into segments.membership "
            "select ?, a.patient_id, a.case_id, ?, coalesce(b.entered_at, ?) "
            "from segment_members_now a left join segment_members_before b "
            f"on {_SAME_MEMBER}",
            [slug, as_of, as_of],
        )
        con.execute("drop table segment_members_before")
        con.execute(
            "insert into segments.segment_runs values (?, ?, ?, ?, ?, ?)",
            [slug, as_of, current.height, entered, exited, datetime.now(UTC)],
        )
        con.execute("commit")
    except Exception:
        con.execute("rollback")
        raise
    finally:
        con.unregister("segment_members_now")
    return MembershipChange(current.height, entered, exited, prev_as_of)


@dataclass(frozen=True)
class Consistency:
    """Invariants of a segment's tables after a run; all zero when they hold."""

    duplicate_members: int  # the same member listed twice in segments.membership
    members_without_open_interval: int  # current member, but no open history row
    open_intervals_of_non_members: int  # open history row, but not a current member

    @property
    def ok(self) -> bool:
        return not (
            self.duplicate_members
            or self.members_without_open_interval
            or self.open_intervals_of_non_members
        )


def check_consistency(con: duckdb.DuckDBPyConnection, slug: str) -> Consistency:
    ensure_membership_tables(con)
    duplicates = con.execute(
        "select count(*) - count(distinct (patient_id, coalesce(case_id, ''))) "
        "from segments.membership where segment_slug = ?",
        [slug],
    ).fetchall()[0][0]
    without_open = con.execute(
        "select count(*) from segments.membership a where a.segment_slug = ? and not exists ("
        "select 1 from segments.membership_history b where b.segment_slug = a.segment_slug "
        f"and b.exited_on is null and {_SAME_MEMBER})",
        [slug],
    ).fetchall()[0][0]
    stray_open = con.execute(
        "select count(*) from segments.membership_history a "
        "where a.segment_slug = ? and a.exited_on is null and not exists ("
        "select 1 from segments.membership b where b.segment_slug = a.segment_slug "
        f"and {_SAME_MEMBER})",
        [slug],
    ).fetchall()[0][0]
    return Consistency(duplicates, without_open, stray_open)
