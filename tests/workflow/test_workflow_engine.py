"""The pure sync rules, on plain values."""

from __future__ import annotations

from datetime import UTC, datetime

from segments.workflow_block import WorkflowSpec
from workflow.planning import (
    Member,
    MemberState,
    membership_frozen,
    plan_booking_moves,
    plan_membership,
)

D1 = datetime(2026, 3, 1, tzinfo=UTC)
D2 = datetime(2026, 3, 2, tzinfo=UTC)
D3 = datetime(2026, 3, 3, tzinfo=UTC)
D4 = datetime(2026, 3, 4, tzinfo=UTC)


def state(mid: str, stage: str = "To call", left: bool = False, entered: datetime = D1,
          seen: datetime | None = None) -> MemberState:  # fmt: skip
    return MemberState(mid, mid, stage, left, entered, seen)


def test_enter_leave_and_come_back_are_set_differences() -> None:
    current = {m: Member(m, m) for m in ["p2", "p3", "p5"]}
    existing = {
        "p1": state("p1"),  # still stored, not current -> leaves
        "p2": state("p2"),  # current and active -> nothing
        "p3": state("p3", left=True),  # had left, is back -> comes back
        "p4": state("p4", left=True),  # had left, still out -> nothing
    }
    plan = plan_membership(current, existing, frozen=False)
    assert [m.member_id for m in plan.enter] == ["p5"]
    assert plan.leave == ["p1"]
    assert plan.come_back == ["p3"]


def test_frozen_list_changes_nobody() -> None:
    plan = plan_membership({"p9": Member("p9", "p9")}, {"p1": state("p1")}, frozen=True)
    assert (plan.enter, plan.leave, plan.come_back) == ([], [], [])


def test_booking_moves_only_for_bookings_newer_than_entry_and_last_trigger() -> None:
    spec = WorkflowSpec(stages=["To call", "Booked", "Not interested"], on_booking="Booked")
    existing = {
        "a": state("a", entered=D2),  # booked D3 > entered D2 -> moves
        "b": state("b", entered=D2),  # booked D1, before entering -> stays
        "c": state("c", stage="Booked", entered=D1),  # already there -> stays
        "d": state("d", entered=D1, seen=D3),  # booking D3 already moved them once -> stays
        "e": state("e", entered=D1, seen=D2),  # a newer booking (D4) than the last one -> moves
        "f": state("f", stage="Not interested", left=True),  # left, booked D4 -> moves
        "g": state("g"),  # no booking -> stays
    }
    bookings = {"a": D3, "b": D1, "c": D4, "d": D3, "e": D4, "f": D4}
    moves = plan_booking_moves(spec, existing, bookings)
    assert [(m.member_id, m.from_stage, m.to_stage, m.booked_at) for m in moves] == [
        ("a", "To call", "Booked", D3),
        ("e", "To call", "Booked", D4),
        ("f", "Not interested", "Booked", D4),
    ]


def test_no_on_booking_means_no_moves() -> None:
    spec = WorkflowSpec(stages=["To call", "Booked"])
    assert plan_booking_moves(spec, {"a": state("a")}, {"a": D4}) == []


def test_snapshot_lists_freeze_after_the_first_sync_until_re_snapshotted() -> None:
    # (mode, first sync, snapshot followed, snapshot taken now) -> frozen
    assert membership_frozen("dynamic", False, None, D2) is False
    assert membership_frozen("snapshot", True, None, None) is False  # first sync takes the list
    assert membership_frozen("snapshot", False, None, None) is True  # nothing known: keep it
    assert membership_frozen("snapshot", False, D2, D2) is True  # same snapshot: keep it
    assert membership_frozen("snapshot", False, D2, D3) is False  # re-frozen since: follow
    assert membership_frozen("snapshot", False, None, D3) is False  # first time one is known
