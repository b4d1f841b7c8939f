"""What a sync changes, as pure functions of (spec, current members, existing state).

Nothing here touches a database or Dagster: the store applies the plans these functions
return, and tests can check the rules on plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from segments.workflow_block import WorkflowSpec


@dataclass(frozen=True)
class Member:
    """One current member of the segment behind a work list."""

    member_id: str  # patient id for patient lists, case id for case lists
    patient_id: str
    case_id: str | None = None


@dataclass(frozen=True)
class MemberState:
    """What the state store knows about a member (the fields the rules need)."""

    member_id: str
    patient_id: str
    stage: str
    left_segment: bool
    entered_at: datetime
    booking_seen_at: datetime | None = None


@dataclass(frozen=True)
class MembershipPlan:
    enter: list[Member]
    leave: list[str]
    come_back: list[str]


@dataclass(frozen=True)
class BookingMove:
    member_id: str
    from_stage: str
    to_stage: str
    # Creation time of the newest qualifying booking; stored so it never fires twice.
    booked_at: datetime


def membership_frozen(
    mode: str,
    first_sync: bool,
    followed_snapshot_at: datetime | None,
    snapshot_taken_at: datetime | None,
) -> bool:
    """Whether this sync must leave a work list's membership as it is.

    A dynamic list follows its segment on every run. A snapshot list takes its members
    on its first sync, and again only when the segment's list was deliberately frozen
    anew (`snapshot_taken_at`) after the one the work list follows.
    """
    if mode != "snapshot" or first_sync:
        return False
    if snapshot_taken_at is None:
        return True
    return followed_snapshot_at is not None and snapshot_taken_at <= followed_snapshot_at


def plan_membership(
    current: Mapping[str, Member],
    existing: Mapping[str, MemberState],
    frozen: bool,
) -> MembershipPlan:
    """Who enters, who leaves and who comes back on this materialisation.

    New members enter; members no longer in the segment are marked as having left (their
    record stays); members who had left and are back resume where they were. A frozen
    list (a snapshot segment after its first sync) changes no membership at all.
    """
    if frozen:
        return MembershipPlan(enter=[], leave=[], come_back=[])
    enter = [current[mid] for mid in sorted(current.keys() - existing.keys())]
    leave = sorted(
        mid for mid, state in existing.items() if not state.left_segment and mid not in current
    )
    come_back = sorted(
        mid for mid, state in existing.items() if state.left_segment and mid in current
    )
    return MembershipPlan(enter=enter, leave=leave, come_back=come_back)


def plan_booking_moves(
    spec: WorkflowSpec,
    existing: Mapping[str, MemberState],
    latest_booking: Mapping[str, datetime],
) -> list[BookingMove]:
    """Members to move to `spec.on_booking` because they booked an upcoming appointment.

    `latest_booking` maps a patient id to the creation time of their newest upcoming
    (not cancelled) appointment. A member moves when that booking was created after they
    entered the work list and after the booking that last moved them, and they are not
    already in the target stage. Members who left the segment count too: a lapsed-patient
    segment usually excludes anyone with an upcoming appointment, so booking is exactly
    what makes them leave.
    """
    target = spec.on_booking
    if target is None:
        return []
    moves = []
    for mid in sorted(existing):
        state = existing[mid]
        booked_at = latest_booking.get(state.patient_id)
        if booked_at is None or state.stage == target:
            continue
        threshold = state.entered_at
        if state.booking_seen_at is not None and state.booking_seen_at > threshold:
            threshold = state.booking_seen_at
        if booked_at > threshold:
            moves.append(BookingMove(mid, state.stage, target, booked_at))
    return moves
