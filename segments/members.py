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

from core.warehouse import WrongDay, table_exists

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
    # What a segment's current membership was evaluated from (see `evaluated_from`).
    "create table if not exists segments.__evaluated ("
    " segment_slug varchar primary key, as_of date not null, inputs varchar not null)",
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

    History moves forward a day at a time: a day before the segment's latest evaluated
    day is refused (`WrongDay`), since its intervals would end before they begin; the
    latest day itself may be evaluated again. Values travel as parameters and as a
    registered frame, never as SQL text.
    """
    ensure_membership_tables(con)
    refuse_earlier_day(con, slug, as_of)
    current = members.select(
        pl.col("patient_id").cast(pl.String), pl.col("case_id").cast(pl.String)
    ).unique()
    con.register("segment_members_now", current.to_arrow())
    try:
        con.execute("begin transaction")
        # The membership changes: what it was evaluated from is no longer known.
        con.execute("delete from segments.__evaluated where segment_slug = ?", [slug])
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


def remember_inputs(con: duckdb.DuckDBPyConnection, slug: str, as_of: date, inputs: str) -> None:
    """Record that the segment's current membership (just recorded for `as_of`) was
    evaluated from `inputs` (a digest the caller makes of the marts, the definition and the
    evaluating code). Any later `record_membership` of the segment drops the record."""
    ensure_membership_tables(con)
    con.execute("delete from segments.__evaluated where segment_slug = ?", [slug])
    con.execute("insert into segments.__evaluated values (?, ?, ?)", [slug, as_of, inputs])


def evaluated_from(con: duckdb.DuckDBPyConnection, slug: str, as_of: date) -> str | None:
    """The inputs the segment's current membership was evaluated from, when that
    membership is of `as_of` and is its latest day; else None."""
    if not table_exists(con, "segments", "__evaluated"):
        return None
    rows = con.execute(
        "select e.inputs from segments.__evaluated e where e.segment_slug = ? and e.as_of = ? "
        "and e.as_of = (select max(as_of) from segments.segment_runs r "
        "where r.segment_slug = e.segment_slug)",
        [slug, as_of],
    ).fetchall()
    return rows[0][0] if rows else None


MEMBERS_SCHEMA = {"segment_slug": pl.String, "patient_id": pl.String, "case_id": pl.String}


def refuse_earlier_day(con: duckdb.DuckDBPyConnection, slug: str, as_of: date) -> None:
    latest = latest_day(con, slug)
    if latest is not None and as_of < latest:
        raise WrongDay(
            f"segment {slug!r} has been evaluated for {latest}, after {as_of}; its "
            "membership history moves forward one day at a time, so an earlier day cannot "
            f"be evaluated after it. Ask for {latest} or a later day (a backfill runs its "
            "days oldest first, from before the first day evaluated)"
        )


def latest_day(con: duckdb.DuckDBPyConnection, slug: str) -> date | None:
    """The latest day the segment was evaluated for, or None."""
    if not table_exists(con, "segments", "segment_runs"):
        return None
    return con.execute(
        "select max(as_of) from segments.segment_runs where segment_slug = ?", [slug]
    ).fetchall()[0][0]


def read_members(con: duckdb.DuckDBPyConnection, slugs: list[str], as_of: date) -> pl.DataFrame:
    """The members of each segment on the as-of day `as_of`: segment_slug, patient_id,
    case_id. The one membership reader: work lists, campaigns and the CLI all use it.

    A segment evaluated for that day gives its members of that day (from the current
    membership, or from the history when it has been evaluated for a later day since). A
    segment not evaluated for that day is a `WrongDay` error naming the days it was
    evaluated for, never another day's members.
    """
    if not slugs:
        return pl.DataFrame(schema=MEMBERS_SCHEMA)
    if not table_exists(con, "segments", "segment_runs"):
        raise WrongDay(
            "no segment has been evaluated in this warehouse yet (there is no "
            "segments.membership table); run `audiences run` first"
        )
    runs = {
        slug: (that_day, latest)
        for slug, that_day, latest in con.execute(
            "select segment_slug, max(as_of) filter (where as_of = ?), max(as_of) "
            "from segments.segment_runs where segment_slug in (select unnest(?)) group by 1",
            [as_of, slugs],
        ).fetchall()
    }
    not_that_day = sorted(s for s in slugs if runs.get(s, (None, None))[0] is None)
    if not_that_day:
        latest = {s: runs[s][1] for s in not_that_day if s in runs}
        shown = ", ".join(
            f"{s} (last evaluated for {latest[s]})" if s in latest else f"{s} (never evaluated)"
            for s in not_that_day
        )
        raise WrongDay(
            f"segment membership for {as_of} is not in the warehouse: {shown}. Evaluate that "
            f"day with `audiences run --as-of {as_of}`"
        )
    frame = con.sql(
        """
        select m.segment_slug, cast(m.patient_id as varchar) as patient_id,
               cast(m.case_id as varchar) as case_id
        from segments.membership m
        where m.segment_slug in (select unnest($slugs)) and m.as_of = $as_of
        union all
        -- Segments evaluated for a later day since: their members of that day, from history.
        select h.segment_slug, cast(h.patient_id as varchar), cast(h.case_id as varchar)
        from segments.membership_history h
        where h.segment_slug in (select unnest($slugs))
          and h.segment_slug not in (
              select segment_slug from segments.membership where as_of = $as_of)
          and h.entered_on <= $as_of and (h.exited_on is null or h.exited_on > $as_of)
        """,
        params={"slugs": slugs, "as_of": as_of},
    ).pl()
    return frame.cast(MEMBERS_SCHEMA)
