"""Two people changing the same member at once: the second sees the first, nothing is lost."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from sqlalchemy.engine import Engine

from segments.workflow_block import WorkListInfo
from workflow.api import (
    Change,
    ConcurrentChangeError,
    history,
    list_members,
    move,
    read_member,
    sync_worklist,
    write_if_unchanged,
)
from workflow.planning import Member
from workflow.store import open_state


@pytest.fixture
def second_engine(state_url: str) -> Iterator[Engine]:
    """A second, independent engine: its own connections, as a second user's process has."""
    eng = open_state(state_url)
    yield eng
    eng.dispose()


def test_a_stale_write_is_refused_and_the_retry_sees_the_first_move(
    engine: Engine,
    second_engine: Engine,
    day: Callable[..., datetime],
    worklist: Callable[..., WorkListInfo],
) -> None:
    wl = worklist()
    sync_worklist(engine, wl, [Member("p1", "p1")], now=day(0))

    with engine.connect() as ann:
        # Ann's screen loaded p1 (version 1, To call) ...
        seen = read_member(ann, wl.slug, "p1")
        assert (seen.stage, seen.version) == ("To call", 1)
        ann.commit()

        # ... Bea, on another connection, moves p1 first.
        move(second_engine, wl, "p1", "Left voicemail", by="bea", now=day(0, 1))

        # Ann's write based on version 1 must not land over Bea's.
        stale = Change(
            kind="moved",
            values={"stage": "Not interested"},
            from_stage="To call",
            to_stage="Not interested",
        )
        assert write_if_unchanged(ann, seen, stale, "ann", day(0, 2)) is False
        ann.commit()

    # Nothing of Ann's stale attempt is stored.
    assert [(e.actor, e.to_stage) for e in history(engine, wl, "p1")] == [
        ("system", "To call"),
        ("bea", "Left voicemail"),
    ]

    # A board that insists on what it saw gets a conflict, and again nothing is written.
    with pytest.raises(ConcurrentChangeError, match="changed since you looked"):
        move(engine, wl, "p1", "Not interested", by="ann", expected_version=1)

    # The normal API path re-reads: Ann's move lands after Bea's and says where from.
    after = move(engine, wl, "p1", "Not interested", by="ann", now=day(0, 2))
    assert (after.stage, after.version) == ("Not interested", 3)
    assert [(e.member_version, e.actor, e.from_stage, e.to_stage)
            for e in history(engine, wl, "p1")] == [
        (1, "system", None, "To call"),
        (2, "bea", "To call", "Left voicemail"),
        (3, "ann", "Left voicemail", "Not interested"),
    ]  # fmt: skip


def test_simultaneous_moves_from_many_threads_all_land_in_one_chain(
    engine: Engine,
    second_engine: Engine,
    day: Callable[..., datetime],
    worklist: Callable[..., WorkListInfo],
) -> None:
    wl = worklist()
    sync_worklist(engine, wl, [Member("p1", "p1")], now=day(0))
    stages = ["Left voicemail", "Booked", "Not interested", "To call"]
    workers = 8
    start = threading.Barrier(workers)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            # Half the workers go through each engine: two pools of real connections.
            eng = engine if i % 2 else second_engine
            move(eng, wl, "p1", stages[i % len(stages)], by=f"user{i}", note=f"n{i}")
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    events = history(engine, wl, "p1")
    # 1 entered + 8 moves, versions 1..9 with no gap and no repeat.
    assert [e.member_version for e in events] == list(range(1, workers + 2))
    moves = events[1:]
    assert sorted(e.note for e in moves) == sorted(f"n{i}" for i in range(workers))
    # Each move started from where the previous one left the member.
    previous = "To call"
    for e in moves:
        assert e.from_stage == previous
        previous = e.to_stage
    final = list_members(engine, wl)[0]
    assert (final.stage, final.version) == (previous, workers + 1)


def test_staff_moves_racing_a_sync_that_marks_members_as_left_both_land(
    engine: Engine,
    second_engine: Engine,
    day: Callable[..., datetime],
    worklist: Callable[..., WorkListInfo],
) -> None:
    wl = worklist()
    ids = [f"p{i:02d}" for i in range(60)]
    sync_worklist(engine, wl, [Member(i, i) for i in ids], now=day(0))
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def staff() -> None:
        try:
            start.wait()
            for i in ids:
                move(second_engine, wl, i, "Left voicemail", by="ann", now=day(1))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    def nightly_sync() -> None:
        try:
            start.wait()
            # Everybody left the segment in this run.
            sync_worklist(engine, wl, [], now=day(1))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=staff), threading.Thread(target=nightly_sync)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    # Whatever the interleaving, each member has both changes: the staff stage and the
    # left_segment mark, at versions 1, 2, 3 (entered first, then the two in either order).
    for m in list_members(engine, wl):
        assert (m.stage, m.left_segment, m.version) == ("Left voicemail", True, 3), m.member_id
        events = history(engine, wl, m.member_id)
        assert [e.member_version for e in events] == [1, 2, 3]
        assert events[0].kind == "entered"
        assert sorted(e.kind for e in events[1:]) == ["left_segment", "moved"]
        moved = next(e for e in events if e.kind == "moved")
        assert (moved.from_stage, moved.to_stage) == ("To call", "Left voicemail")
