"""Members over several materialisations, and staff actions, against a real state store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

import pytest
from sqlalchemy.engine import Engine

from segments.workflow_block import UnknownStageError, WorkListInfo
from workflow.api import (
    WorkListAccessError,
    add_note,
    assign,
    history,
    list_members,
    move,
    set_due_date,
    stage_counts,
    sync_worklist,
)
from workflow.planning import Member


def members(*ids: str) -> list[Member]:
    return [Member(member_id=i, patient_id=i) for i in ids]


def rows(engine: Engine, wl, **kw) -> list[tuple[str, str, bool]]:  # noqa: ANN001
    return [(m.member_id, m.stage, m.left_segment) for m in list_members(engine, wl, **kw)]


def test_enter_move_leave_and_come_back_over_four_runs(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist()

    # Run 1: the segment is p1, p2, p3 -> all enter the first stage with the default assignee.
    r1 = sync_worklist(engine, wl, members("p3", "p1", "p2"), now=day(0))
    assert (r1.entered, r1.left, r1.came_back, r1.booked) == (3, 0, 0, 0)
    assert rows(engine, wl) == [
        ("p1", "To call", False),
        ("p2", "To call", False),
        ("p3", "To call", False),
    ]
    assert {m.assignee for m in list_members(engine, wl)} == {"sam@clinic.example"}
    assert {m.last_touch_at for m in list_members(engine, wl)} == {None}

    move(engine, wl, "p1", "left voicemail", by="ann", note="no answer", now=day(0, 2))
    move(engine, wl, "p2", "Not interested", by="ann", now=day(0, 3))

    # Run 2: p2, p3, p4 -> p4 enters, p1 leaves but keeps its stage and is listed apart.
    r2 = sync_worklist(engine, wl, members("p2", "p3", "p4"), now=day(1))
    assert (r2.entered, r2.left, r2.came_back) == (1, 1, 0)
    # Order: still in the segment first, then stage order (To call < Not interested), then id.
    assert rows(engine, wl) == [
        ("p3", "To call", False),
        ("p4", "To call", False),
        ("p2", "Not interested", False),
        ("p1", "Left voicemail", True),
    ]

    # Run 3: p1 is back -> resumes at Left voicemail, not at the first stage.
    r3 = sync_worklist(engine, wl, members("p1", "p2", "p3", "p4"), now=day(2))
    assert (r3.entered, r3.left, r3.came_back) == (0, 0, 1)
    assert ("p1", "Left voicemail", False) in rows(engine, wl)

    # Run 4: same members -> nothing to do.
    r4 = sync_worklist(engine, wl, members("p1", "p2", "p3", "p4"), now=day(3))
    assert (r4.entered, r4.left, r4.came_back) == (0, 0, 0)

    # Counts: To call p3, p4; Left voicemail p1; Not interested p2 -> open = 2 + 1 = 3.
    counts = stage_counts(engine, wl)
    assert counts.active == {"To call": 2, "Left voicemail": 1, "Booked": 0, "Not interested": 1}
    assert counts.left_segment == {"To call": 0, "Left voicemail": 0, "Booked": 0,
                                   "Not interested": 0}  # fmt: skip
    assert counts.open == 3

    events = [
        (e.member_version, e.at, e.actor, e.kind, e.from_stage, e.to_stage, e.note)
        for e in history(engine, wl, "p1")
    ]
    assert events == [
        (1, day(0), "system", "entered", None, "To call", None),
        (2, day(0, 2), "ann", "moved", "To call", "Left voicemail", "no answer"),
        (3, day(1), "system", "left_segment", None, None, None),
        (4, day(2), "system", "returned", None, "Left voicemail", None),
    ]
    p1 = next(m for m in list_members(engine, wl) if m.member_id == "p1")
    assert (p1.version, p1.last_touch_at, p1.last_touch_by) == (4, day(0, 2), "ann")
    assert p1.left_at is None


def test_members_left_are_counted_apart_by_stage(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist()
    sync_worklist(engine, wl, members("a", "b", "c"), now=day(0))
    move(engine, wl, "b", "Booked", by="ann", now=day(0, 1))
    # b and c leave: b from Booked, c from To call; a stays in To call.
    sync_worklist(engine, wl, members("a"), now=day(1))
    counts = stage_counts(engine, wl)
    assert counts.active == {"To call": 1, "Left voicemail": 0, "Booked": 0, "Not interested": 0}
    assert counts.left_segment == {"To call": 1, "Left voicemail": 0, "Booked": 1,
                                   "Not interested": 0}  # fmt: skip
    left = [m for m in list_members(engine, wl) if m.left_segment]
    assert [(m.member_id, m.left_at) for m in left] == [("c", day(1)), ("b", day(1))]


def test_snapshot_list_keeps_its_first_members_until_re_snapshotted(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist("event-attendees", mode="snapshot")
    frozen_first, frozen_again = day(-1), day(1, 12)
    sync_worklist(engine, wl, members("a", "b"), now=day(0), snapshot_taken_at=frozen_first)
    # Membership differs but the segment's snapshot is the same one: nothing changes.
    again = sync_worklist(engine, wl, members("b", "c"), now=day(1), snapshot_taken_at=frozen_first)
    assert again.frozen
    assert (again.entered, again.left, again.came_back) == (0, 0, 0)
    assert rows(engine, wl) == [("a", "To call", False), ("b", "To call", False)]
    # The segment was re-frozen on purpose: the work list takes the new list once ...
    third = sync_worklist(engine, wl, members("b", "c"), now=day(2), snapshot_taken_at=frozen_again)
    assert (third.frozen, third.entered, third.left) == (False, 1, 1)
    assert rows(engine, wl) == [
        ("b", "To call", False),
        ("c", "To call", False),
        ("a", "To call", True),
    ]
    # ... and keeps it again afterwards.
    fourth = sync_worklist(engine, wl, members("d"), now=day(3), snapshot_taken_at=frozen_again)
    assert fourth.frozen
    assert [r[0] for r in rows(engine, wl) if not r[2]] == ["b", "c"]


def test_unknown_stage_is_refused_and_nothing_is_written(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist()
    sync_worklist(engine, wl, members("p1"), now=day(0))
    with pytest.raises(UnknownStageError) as err:
        move(engine, wl, "p1", "Called back", by="ann")
    assert str(err.value) == (
        "stage 'Called back' does not exist; the stages are: "
        "To call, Left voicemail, Booked, Not interested"
    )
    assert [e.kind for e in history(engine, wl, "p1")] == ["entered"]
    assert rows(engine, wl) == [("p1", "To call", False)]


def test_private_list_is_refused_to_everyone_but_its_owner(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist("my-pipeline", visibility="private", owner="dr.lee@clinic.example")
    sync_worklist(engine, wl, members("p1"), now=day(0))

    refused = [
        lambda: list_members(engine, wl, user="ann"),
        lambda: list_members(engine, wl, user=None),
        lambda: stage_counts(engine, wl, user="ann"),
        lambda: history(engine, wl, "p1", user="ann"),
        lambda: move(engine, wl, "p1", "Booked", by="ann"),
        lambda: add_note(engine, wl, "p1", "hello", by="ann"),
        lambda: assign(engine, wl, "p1", "ann", by="ann"),
        # Even the owner cannot hand a private member to someone who cannot see the list.
        lambda: assign(engine, wl, "p1", "ann", by="dr.lee@clinic.example"),
    ]
    for attempt in refused:
        with pytest.raises(WorkListAccessError, match="private"):
            attempt()
    assert [e.kind for e in history(engine, wl, "p1", user="dr.lee@clinic.example")] == ["entered"]

    # The owner (any letter case) can work the list.
    move(engine, wl, "p1", "Booked", by="Dr.Lee@clinic.example", now=day(0, 1))
    assert rows(engine, wl, user="dr.lee@clinic.example") == [("p1", "Booked", False)]


def test_assign_and_note_are_recorded_and_filterable(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist()
    sync_worklist(engine, wl, members("p1", "p2"), now=day(0))
    assign(engine, wl, "p2", "kim@clinic.example", by="ann", now=day(0, 1))
    add_note(engine, wl, "p2", "prefers mornings", by="kim@clinic.example", now=day(0, 2))

    assert [m.member_id for m in list_members(engine, wl, assignee="kim@clinic.example")] == ["p2"]
    assert [m.member_id for m in list_members(engine, wl, stage="to call")] == ["p1", "p2"]
    p2 = next(m for m in list_members(engine, wl) if m.member_id == "p2")
    assert (p2.stage, p2.last_touch_at, p2.last_touch_by) == (
        "To call", day(0, 2), "kim@clinic.example"
    )  # fmt: skip
    assert [(e.kind, e.actor, e.assignee, e.note) for e in history(engine, wl, "p2")] == [
        ("entered", "system", "sam@clinic.example", None),
        ("assigned", "ann", "kim@clinic.example", None),
        ("note", "kim@clinic.example", None, "prefers mornings"),
    ]


def test_due_date_is_set_cleared_and_recorded(
    engine: Engine, day: Callable[..., datetime], worklist: Callable[..., WorkListInfo]
) -> None:
    wl = worklist()
    sync_worklist(engine, wl, members("p1"), now=day(0))
    set_due_date(engine, wl, "p1", date(2026, 3, 9), by="ann", now=day(0, 1))
    assert list_members(engine, wl)[0].due_date == date(2026, 3, 9)
    set_due_date(engine, wl, "p1", None, by="ann", now=day(0, 2))
    assert list_members(engine, wl)[0].due_date is None
    assert [(e.kind, e.note) for e in history(engine, wl, "p1")] == [
        ("entered", None),
        ("due", "due 2026-03-09"),
        # A cleared date says so in the history, not a bare "due".
        ("due", "due date cleared"),
    ]
