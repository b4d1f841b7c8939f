"""`on_booking`: members who book move to the booking stage, recorded as `system`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from segments.workflow_block import WorkflowSpec, WorkListInfo
from workflow.api import history, list_members, move, sync_worklist
from workflow.planning import Member
from workflow.run import materialize_worklist


def test_booking_moves_a_member_once_and_staff_can_override(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist()
    sync_worklist(engine, wl, [Member("p1", "p1"), Member("p2", "p2")], now=day(0))

    # p1 booked 5 hours after entering (day 0, 09:00 + 5h); p2's booking predates their entry.
    bookings = {"p1": day(0, 5), "p2": day(-1)}
    # Run 2: booking made p1 leave the segment (it excludes patients with a next appointment).
    r2 = sync_worklist(engine, wl, [Member("p2", "p2")], bookings, now=day(1))
    assert (r2.left, r2.booked) == (1, 1)
    assert [(m.member_id, m.stage, m.left_segment) for m in list_members(engine, wl)] == [
        ("p2", "To call", False),
        ("p1", "Booked", True),
    ]
    assert [(e.actor, e.kind, e.from_stage, e.to_stage) for e in history(engine, wl, "p1")] == [
        ("system", "entered", None, "To call"),
        ("system", "left_segment", None, None),
        ("system", "moved", "To call", "Booked"),
    ]

    # Staff learn the booking is tentative and move p1 back; the same booking does not
    # move them again on the next run.
    move(engine, wl, "p1", "To call", by="ann", now=day(1, 2))
    r3 = sync_worklist(engine, wl, [Member("p2", "p2")], bookings, now=day(2))
    assert r3.booked == 0
    assert [m.stage for m in list_members(engine, wl) if m.member_id == "p1"] == ["To call"]

    # A newer booking (day 2, 10:00) does.
    r4 = sync_worklist(engine, wl, [Member("p2", "p2")], {"p1": day(2, 1)}, now=day(3))
    assert r4.booked == 1
    assert [m.stage for m in list_members(engine, wl) if m.member_id == "p1"] == ["Booked"]


def test_without_on_booking_bookings_change_nothing(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist(spec=WorkflowSpec(stages=["To call", "Booked"]))
    sync_worklist(engine, wl, [Member("p1", "p1")], now=day(0))
    result = sync_worklist(engine, wl, [Member("p1", "p1")], {"p1": day(0, 5)}, now=day(1))
    assert result.booked == 0
    assert [m.stage for m in list_members(engine, wl)] == ["To call"]


def test_materialise_from_a_real_warehouse_with_clinic_time_zone(
    tmp_path: Path,
    state_url: str,
    engine: Engine,
    add_appointments: Callable[..., None],
    build_warehouse: Callable[..., None],
    day: Callable[..., datetime],
    worklist: Callable[..., WorkListInfo],
) -> None:
    db = tmp_path / "warehouse.duckdb"
    wl = worklist()
    build_warehouse(db, [("p1", None), ("p2", None), ("p3", None), ("p4", None)], "2026-03-09")
    first = materialize_worklist(wl, db, state_url, "Australia/Sydney", "2026-03-09", now=day(0))
    assert first.entered == 4
    # The next day's segment run finds the same four.
    build_warehouse(db, [("p1", None), ("p2", None), ("p3", None), ("p4", None)], "2026-03-10")
    # Entered at T0 = 2026-03-02 09:00 UTC. As of 2026-03-10 in Sydney (UTC+11 in March):
    add_appointments(db, [
        # p1: starts 2026-03-09 14:00 UTC = 03-10 01:00 Sydney -> upcoming; created after entry.
        ("a1", "p1", "2026-03-09 14:00+00", "2026-03-03 08:00+00", None),
        # p2: starts 2026-03-09 12:00 UTC = 03-09 23:00 Sydney -> already past at D.
        ("a2", "p2", "2026-03-09 12:00+00", "2026-03-03 08:00+00", None),
        # p3: upcoming but cancelled.
        ("a3", "p3", "2026-03-20 00:00+00", "2026-03-03 08:00+00", "2026-03-04 00:00+00"),
        # p4: upcoming, but booked before entering the work list.
        ("a4", "p4", "2026-03-20 00:00+00", "2026-03-01 08:00+00", None),
        # p5 is not on the list at all.
        ("a5", "p5", "2026-03-20 00:00+00", "2026-03-03 08:00+00", None),
    ])  # fmt: skip
    second = materialize_worklist(wl, db, state_url, "Australia/Sydney", "2026-03-10", now=day(8))
    assert (second.entered, second.left, second.booked) == (0, 0, 1)
    assert [(m.member_id, m.stage) for m in list_members(engine, wl)] == [
        ("p2", "To call"),
        ("p3", "To call"),
        ("p4", "To call"),
        ("p1", "Booked"),
    ]
    assert second.counts is not None
    assert second.counts.active["Booked"] == 1
    assert second.counts.open == 3


def test_case_work_list_members_are_cases(
    tmp_path: Path,
    state_url: str,
    engine: Engine,
    build_warehouse: Callable[..., None],
    day: Callable[..., datetime],
    worklist: Callable[..., WorkListInfo],
) -> None:
    db = tmp_path / "warehouse.duckdb"
    wl = worklist(entity="case", spec=WorkflowSpec(stages=["Check pre-op", "Done"]))
    build_warehouse(db, [("p1", "c1"), ("p1", "c2"), ("p2", "c3")], "2026-03-09")
    materialize_worklist(wl, db, state_url, "UTC", "2026-03-09", now=day(0))
    assert [(m.member_id, m.patient_id, m.case_id) for m in list_members(engine, wl)] == [
        ("c1", "p1", "c1"),
        ("c2", "p1", "c2"),
        ("c3", "p2", "c3"),
    ]


def test_snapshot_work_list_follows_only_a_deliberate_re_snapshot(
    tmp_path: Path,
    state_url: str,
    engine: Engine,
    build_warehouse: Callable[..., None],
    worklist: Callable[..., WorkListInfo],
    day: Callable[..., datetime],
) -> None:
    import polars as pl

    from core.state_store import migrate
    from segments import snapshots

    migrate(engine, ["segments"])
    db = tmp_path / "warehouse.duckdb"
    wl = worklist(mode="snapshot")

    def freeze(*ids: str) -> None:
        frame = pl.DataFrame({"patient_id": list(ids), "case_id": [None] * len(ids)},
                             schema={"patient_id": pl.String, "case_id": pl.String})  # fmt: skip
        snapshots.save_snapshot(engine, "lapsed-physio", frame, date(2026, 3, 9))

    freeze("p1", "p2")
    build_warehouse(db, [("p1", None), ("p2", None)], "2026-03-09")
    assert materialize_worklist(wl, db, state_url, as_of="2026-03-09", now=day(0)).entered == 2
    # Membership rows differ without a new snapshot (e.g. a hand-edited table): ignored.
    build_warehouse(db, [("p3", None)], "2026-03-10")
    kept = materialize_worklist(wl, db, state_url, as_of="2026-03-10", now=day(1))
    assert (kept.frozen, kept.entered, kept.left) == (True, 0, 0)
    # The segments stage re-freezes the list on purpose: the work list follows it.
    freeze("p2", "p3")
    build_warehouse(db, [("p2", None), ("p3", None)], "2026-03-11")
    followed = materialize_worklist(wl, db, state_url, as_of="2026-03-11", now=day(2))
    assert (followed.frozen, followed.entered, followed.left) == (False, 1, 1)
    assert [(m.member_id, m.left_segment) for m in list_members(engine, wl)] == [
        ("p2", False),
        ("p3", False),
        ("p1", True),
    ]


@pytest.mark.parametrize("as_of", ["2026-04-05", "2026-09-06", "2026-03-10"])
def test_upcoming_bookings_follow_the_local_day_across_midnight_clock_changes(
    tmp_path: Path, build_warehouse: Callable[..., None], add_appointments: Callable[..., None],
    as_of: str,
) -> None:  # fmt: skip
    """America/Santiago changes its clocks at midnight: on 2026-04-05 the hour before it is
    lived twice, on 2026-09-06 midnight never comes. A booking is upcoming when it starts on
    or after the as-of day there; the day of each start is worked out here by zoneinfo."""
    from zoneinfo import ZoneInfo

    from workflow.warehouse_reads import read_latest_bookings

    zone, day = ZoneInfo("America/Santiago"), date.fromisoformat(as_of)
    db = tmp_path / "w.duckdb"
    build_warehouse(db, [], as_of)
    # A start every 20 minutes from two days before to a day after, one patient each.
    first = datetime.combine(day, datetime.min.time(), UTC) - timedelta(days=2)
    starts = [first + timedelta(minutes=20 * n) for n in range(3 * 24 * 3)]
    created = datetime(2026, 1, 1, tzinfo=UTC)
    add_appointments(db, [(f"a{n}", f"p{n}", s, created, None) for n, s in enumerate(starts)])
    expected = {f"p{n}" for n, s in enumerate(starts) if s.astimezone(zone).date() >= day}
    found = read_latest_bookings(db, day, "America/Santiago")
    assert set(found) == expected
    assert 0 < len(expected) < len(starts)


def test_a_sync_made_from_the_same_inputs_is_not_made_again(
    tmp_path: Path, state_url: str, engine: Engine, build_warehouse: Callable[..., None],
    day: Callable[..., datetime], worklist: Callable[..., WorkListInfo],
) -> None:  # fmt: skip
    db = tmp_path / "warehouse.duckdb"
    wl = worklist()
    build_warehouse(db, [("p1", None), ("p2", None)], "2026-03-09")

    def sync(inputs: str | None, at: int) -> object:
        return materialize_worklist(wl, db, state_url, "Australia/Sydney", "2026-03-09",
                                    now=day(at), inputs=inputs)  # fmt: skip

    first = sync("evaluation-1", 0)
    assert (first.entered, first.reused) == (2, False)
    again = sync("evaluation-1", 1)
    assert again.reused and again.entered == 0
    assert again.counts is not None and again.counts.active["To call"] == 2
    assert [e.kind for e in history(engine, wl, "p1")] == ["entered"]

    # The segment evaluated again (other inputs), with p2 gone and p3 new: synced.
    build_warehouse(db, [("p1", None), ("p3", None)], "2026-03-09")
    changed = sync("evaluation-2", 2)
    assert (changed.reused, changed.entered, changed.left) == (False, 1, 1)
    # Without inputs (unknown), always synced.
    assert sync(None, 3).reused is False

    # A sync that fails (no membership of its day) leaves no record: the next one syncs.
    build_warehouse(db, [("p1", None), ("p3", None)], "2026-03-10")
    with pytest.raises(LookupError):
        materialize_worklist(wl, db, state_url, "Australia/Sydney", "2026-03-09",
                             now=day(4), inputs="evaluation-3")  # fmt: skip
    build_warehouse(db, [("p1", None), ("p3", None)], "2026-03-09")
    assert sync("evaluation-3", 5).reused is False
    assert sync("evaluation-3", 6).reused is True
