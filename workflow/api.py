"""The Python API over work lists: sync membership, move, assign, note, read.

Every change of a member is one transaction that updates its row only if the row still
has the `version` the writer read (compare-and-set) and appends one event carrying the new
version. A writer that loses the race re-reads and decides again, so two people moving
the same member one after the other both land, in order, and the second event's
`from_stage` is the first one's `to_stage`. Callers that must not act on a stale view (a
board showing version 4) pass `expected_version` and get `ConcurrentChangeError` instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from core.state_store import insert_many
from segments.workflow_block import WorkflowSpec, WorkListInfo
from workflow.planning import (
    BookingMove,
    Member,
    MemberState,
    membership_frozen,
    plan_booking_moves,
    plan_membership,
)
from workflow.store import events, lists, members

SYSTEM_ACTOR = "system"
# Enough for any realistic burst of staff on one member; each failed attempt means
# someone else's change landed, so this bounds starvation rather than normal use.
MAX_ATTEMPTS = 50


class WorkListAccessError(PermissionError):
    """Acting on (or looking at) a private work list one does not own."""


class MemberNotFoundError(LookupError):
    """A member id that is not on the work list."""


class ConcurrentChangeError(RuntimeError):
    """The member changed since the caller looked (with `expected_version`)."""


@dataclass(frozen=True)
class MemberView:
    worklist_slug: str
    member_id: str
    patient_id: str
    case_id: str | None
    stage: str
    assignee: str | None
    due_date: date | None
    entered_at: datetime
    stage_since: datetime
    last_touch_at: datetime | None
    last_touch_by: str | None
    left_segment: bool
    left_at: datetime | None
    version: int


@dataclass(frozen=True)
class Event:
    member_id: str
    member_version: int
    at: datetime
    actor: str
    kind: str
    from_stage: str | None
    to_stage: str | None
    assignee: str | None
    note: str | None


@dataclass(frozen=True)
class StageCounts:
    """Members per stage, in stage order; members who left the segment counted apart."""

    stages: list[str]
    terminal: list[str]
    active: dict[str, int]
    left_segment: dict[str, int]

    @property
    def open(self) -> int:
        return sum(n for s, n in self.active.items() if s not in self.terminal)


@dataclass
class SyncResult:
    entered: int = 0
    left: int = 0
    came_back: int = 0
    booked: int = 0
    frozen: bool = False
    counts: StageCounts | None = field(default=None)
    # Not synced again: the last complete sync was made from the same inputs.
    reused: bool = False


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


# --- visibility -------------------------------------------------------------------------


def visible_to(info: WorkListInfo, user: str | None) -> bool:
    """A shared work list is anyone's; a private one is its owner's alone."""
    if info.visibility != "private":
        return True
    return user is not None and user.strip().casefold() == (info.owner or "").strip().casefold()


def check_access(info: WorkListInfo, user: str | None) -> None:
    """Refuse anyone but the owner on a private work list."""
    if info.visibility != "private":
        return
    if user is None:
        raise WorkListAccessError(
            f"work list {info.slug!r} is private; say who you are (--user / --by) "
            "and only its owner can see or change it"
        )
    if user.strip().casefold() != (info.owner or "").strip().casefold():
        raise WorkListAccessError(
            f"work list {info.slug!r} is private to its owner; {user!r} may not see or "
            "change it (ask the owner to make it `visibility: shared`)"
        )


# --- reading ----------------------------------------------------------------------------


def _view(row: Row[Any]) -> MemberView:
    return MemberView(
        worklist_slug=row.worklist_slug,
        member_id=row.member_id,
        patient_id=row.patient_id,
        case_id=row.case_id,
        stage=row.stage,
        assignee=row.assignee,
        due_date=row.due_date,
        entered_at=row.entered_at,
        stage_since=row.stage_since,
        last_touch_at=row.last_touch_at,
        last_touch_by=row.last_touch_by,
        left_segment=bool(row.left_segment),
        left_at=row.left_at,
        version=row.version,
    )


def read_member(conn: Connection, slug: str, member_id: str) -> MemberView:
    row = conn.execute(
        sa.select(members).where(members.c.worklist_slug == slug, members.c.member_id == member_id)
    ).first()
    if row is None:
        raise MemberNotFoundError(
            f"{member_id!r} is not on work list {slug!r}; "
            f"list its members with `audiences worklist show {slug}`"
        )
    return _view(row)


def list_members(
    engine: Engine,
    info: WorkListInfo,
    user: str | None = None,
    stage: str | None = None,
    assignee: str | None = None,
    limit: int | None = None,
    in_segment_only: bool = False,
    unassigned: bool = False,
    due_before: date | None = None,
    assignee_in: list[str] | None = None,
) -> list[MemberView]:
    """Members in stage order then member id; those still in the segment first. `limit`
    (with `stage`): the first members of that stage by member id, for a board.
    `assignee_in`: assigned to one of these users (e.g. a department's)."""
    check_access(info, user)
    query = sa.select(members).where(members.c.worklist_slug == info.slug)
    if stage is not None:
        query = query.where(members.c.stage == info.spec.resolve_stage(stage))
    if assignee is not None:
        query = query.where(members.c.assignee == assignee)
    if in_segment_only:
        query = query.where(members.c.left_segment.is_(False))
    if unassigned:
        query = query.where(members.c.assignee.is_(None))
    if due_before is not None:
        query = query.where(members.c.due_date < due_before)
    if assignee_in is not None:
        query = query.where(members.c.assignee.in_(assignee_in))
    if limit is not None:
        query = query.order_by(members.c.member_id).limit(limit)
    with engine.connect() as conn:
        rows = [_view(r) for r in conn.execute(query)]
    order = {s: i for i, s in enumerate(info.spec.stages)}
    # Stages dropped from the definition since a member was put there sort last.
    return sorted(
        rows, key=lambda m: (m.left_segment, order.get(m.stage, len(order)), m.stage, m.member_id)
    )


def stage_counts(engine: Engine, info: WorkListInfo, user: str | None = None) -> StageCounts:
    check_access(info, user)
    query = (
        sa.select(members.c.stage, members.c.left_segment, sa.func.count().label("n"))
        .where(members.c.worklist_slug == info.slug)
        .group_by(members.c.stage, members.c.left_segment)
    )
    active = dict.fromkeys(info.spec.stages, 0)
    left = dict.fromkeys(info.spec.stages, 0)
    with engine.connect() as conn:
        for row in conn.execute(query):
            target = left if row.left_segment else active
            target[row.stage] = target.get(row.stage, 0) + row.n
    return StageCounts(list(info.spec.stages), list(info.spec.terminal), active, left)


def history(
    engine: Engine, info: WorkListInfo, member_id: str, user: str | None = None
) -> list[Event]:
    """Every event of a member, oldest first."""
    check_access(info, user)
    with engine.connect() as conn:
        read_member(conn, info.slug, member_id)
        rows = conn.execute(
            sa.select(events)
            .where(events.c.worklist_slug == info.slug, events.c.member_id == member_id)
            .order_by(events.c.member_version)
        ).all()
    return [
        Event(
            member_id=r.member_id,
            member_version=r.member_version,
            at=r.at,
            actor=r.actor,
            kind=r.kind,
            from_stage=r.from_stage,
            to_stage=r.to_stage,
            assignee=r.assignee,
            note=r.note,
        )
        for r in rows
    ]


# --- changing one member ----------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A decided change of one member: new column values and the event that records it."""

    kind: str
    values: dict[str, Any]
    from_stage: str | None = None
    to_stage: str | None = None
    assignee: str | None = None
    note: str | None = None


def _event_row(
    slug: str,
    member_id: str,
    version: int,
    at: datetime,
    actor: str,
    kind: str,
    from_stage: str | None = None,
    to_stage: str | None = None,
    assignee: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One `workflow_events` row: the change that gave the member `version`."""
    return {
        "worklist_slug": slug,
        "member_id": member_id,
        "member_version": version,
        "at": at,
        "actor": actor,
        "kind": kind,
        "from_stage": from_stage,
        "to_stage": to_stage,
        "assignee": assignee,
        "note": note,
    }


def write_if_unchanged(
    conn: Connection, seen: MemberView, change: Change, actor: str, at: datetime
) -> bool:
    """Apply `change` only if the member still has the version `seen` has.

    Returns False (and writes nothing) when someone else changed the member first.
    """
    new_version = seen.version + 1
    result = conn.execute(
        members.update()
        .where(
            members.c.worklist_slug == seen.worklist_slug,
            members.c.member_id == seen.member_id,
            members.c.version == seen.version,
        )
        .values(**change.values, version=new_version)
    )
    if result.rowcount != 1:
        return False
    conn.execute(
        events.insert().values(
            _event_row(
                seen.worklist_slug, seen.member_id, new_version, at, actor, change.kind,
                change.from_stage, change.to_stage, change.assignee, change.note,
            )
        )
    )  # fmt: skip
    return True


def change_member(
    engine: Engine,
    slug: str,
    member_id: str,
    decide: Callable[[MemberView], Change | None],
    actor: str,
    now: datetime | None = None,
    expected_version: int | None = None,
) -> MemberView | None:
    """Read, decide, compare-and-set; on a lost race read again and decide again.

    `decide` sees the member as it is now and returns the change to make, or None for
    nothing to do. Returns the member after the change (None when nothing was done).
    """
    for _ in range(MAX_ATTEMPTS):
        with engine.begin() as conn:
            seen = read_member(conn, slug, member_id)
            if expected_version is not None and seen.version != expected_version:
                raise ConcurrentChangeError(
                    f"{member_id!r} on {slug!r} changed since you looked (version "
                    f"{expected_version}, now {seen.version}); reload and try again"
                )
            change = decide(seen)
            if change is None:
                return None
            if write_if_unchanged(conn, seen, change, actor, _now(now)):
                return read_member(conn, slug, member_id)
    raise ConcurrentChangeError(
        f"{member_id!r} on {slug!r} kept changing under {MAX_ATTEMPTS} attempts; try again"
    )


def _touch(actor: str, at: datetime) -> dict[str, Any]:
    return {"last_touch_at": at, "last_touch_by": actor}


def _authorise(info: WorkListInfo, by: str) -> str:
    """The acting user, once they are known and allowed to change this list."""
    by = (by or "").strip()
    if not by:
        raise ValueError("say who is making the change (--by USER)")
    check_access(info, by)
    return by


def _staff_change(
    engine: Engine,
    info: WorkListInfo,
    member_id: str,
    by: str,
    at: datetime,
    decide: Callable[[MemberView], Change],
    expected_version: int | None = None,
) -> MemberView:
    result = change_member(engine, info.slug, member_id, decide, by, at, expected_version)
    # Staff changes always decide to write, so a result is always there.
    assert result is not None
    return result


def move(
    engine: Engine,
    info: WorkListInfo,
    member_id: str,
    stage: str,
    by: str,
    note: str | None = None,
    expected_version: int | None = None,
    now: datetime | None = None,
) -> MemberView:
    """Move a member to `stage` (matched case-insensitively); refuses unknown stages."""
    by = _authorise(info, by)
    target = info.spec.resolve_stage(stage)
    at = _now(now)

    def decide(seen: MemberView) -> Change:
        # Moving to the stage one is in is still recorded: it is a deliberate touch.
        return Change(
            kind="moved",
            values={"stage": target, "stage_since": at, **_touch(by, at)},
            from_stage=seen.stage,
            to_stage=target,
            note=note,
        )

    return _staff_change(engine, info, member_id, by, at, decide, expected_version)


def assign(
    engine: Engine,
    info: WorkListInfo,
    member_id: str,
    assignee: str | None,
    by: str,
    expected_version: int | None = None,
    now: datetime | None = None,
) -> MemberView:
    """Assign a member to a user (None unassigns)."""
    by = _authorise(info, by)
    assignee = (assignee or "").strip() or None
    if info.visibility == "private" and assignee is not None:
        # Nobody but the owner can see a private list, so nobody else can work it.
        check_access(info, assignee)
    at = _now(now)

    def decide(seen: MemberView) -> Change:
        return Change(
            kind="assigned",
            values={"assignee": assignee, **_touch(by, at)},
            assignee=assignee,
        )

    return _staff_change(engine, info, member_id, by, at, decide, expected_version)


def add_note(
    engine: Engine,
    info: WorkListInfo,
    member_id: str,
    text: str,
    by: str,
    now: datetime | None = None,
) -> MemberView:
    by = _authorise(info, by)
    if not text or not text.strip():
        raise ValueError("a note needs some text")
    at = _now(now)

    def decide(seen: MemberView) -> Change:
        return Change(kind="note", values=_touch(by, at), note=text)

    return _staff_change(engine, info, member_id, by, at, decide)


def set_due_date(
    engine: Engine,
    info: WorkListInfo,
    member_id: str,
    due: date | None,
    by: str,
    now: datetime | None = None,
    expected_version: int | None = None,
) -> MemberView:
    """Set (or, with None, clear) a member's due date."""
    by = _authorise(info, by)
    at = _now(now)

    def decide(seen: MemberView) -> Change:
        return Change(
            kind="due",
            values={"due_date": due, **_touch(by, at)},
            note="due date cleared" if due is None else f"due {due.isoformat()}",
        )

    return _staff_change(engine, info, member_id, by, at, decide, expected_version)


# --- sync -------------------------------------------------------------------------------


def _record_list(
    conn: Connection, info: WorkListInfo, at: datetime
) -> tuple[bool, datetime | None]:
    """Upsert the work list's registry row: (first sync?, snapshot followed so far)."""
    before = conn.execute(sa.select(lists.c.snapshot_at).where(lists.c.slug == info.slug)).first()
    values = {
        "segment_slug": info.segment_slug,
        "owner": info.owner,
        "visibility": info.visibility,
        "mode": info.mode,
        "entity": info.entity,
        "spec_json": info.spec.model_dump_json(),
        "last_synced_at": at,
    }
    if before is not None:
        conn.execute(lists.update().where(lists.c.slug == info.slug).values(**values))
        return False, before.snapshot_at
    conn.execute(lists.insert().values(slug=info.slug, first_synced_at=at, **values))
    return True, None


def _states(conn: Connection, slug: str) -> dict[str, MemberState]:
    rows = conn.execute(
        sa.select(
            members.c.member_id,
            members.c.patient_id,
            members.c.stage,
            members.c.left_segment,
            members.c.entered_at,
            members.c.booking_seen_at,
        ).where(members.c.worklist_slug == slug)
    )
    return {
        r.member_id: MemberState(
            member_id=r.member_id,
            patient_id=r.patient_id,
            stage=r.stage,
            left_segment=bool(r.left_segment),
            entered_at=r.entered_at,
            booking_seen_at=r.booking_seen_at,
        )
        for r in rows
    }


def _enter(conn: Connection, info: WorkListInfo, new: list[Member], at: datetime) -> None:
    """New members into the first stage, with the default assignee, one event each."""
    first_stage = info.spec.first_stage
    assignee = info.spec.default_assignee
    insert_many(
        conn,
        members,
        [
            {
                "worklist_slug": info.slug,
                "member_id": m.member_id,
                "patient_id": m.patient_id,
                "case_id": m.case_id,
                "stage": first_stage,
                "assignee": assignee,
                "entered_at": at,
                "stage_since": at,
                "left_segment": False,
                "version": 1,
            }
            for m in new
        ],
    )
    insert_many(
        conn,
        events,
        [
            _event_row(info.slug, m.member_id, 1, at, SYSTEM_ACTOR, "entered",
                       to_stage=first_stage, assignee=assignee)
            for m in new
        ],
    )  # fmt: skip


def sync_worklist(
    engine: Engine,
    info: WorkListInfo,
    current: Iterable[Member],
    latest_booking: Mapping[str, datetime] | None = None,
    now: datetime | None = None,
    snapshot_taken_at: datetime | None = None,
) -> SyncResult:
    """Bring a work list in line with its segment's current members (one materialisation).

    New members enter the first stage (with the default assignee); members who left
    are marked `left_segment`; members who came back resume their stage. A snapshot list
    takes its members on the first sync, and again only after the segment's list was
    re-frozen on purpose (`snapshot_taken_at` newer than the one it follows). Then, with
    `on_booking`, members who booked move to that stage as `system`. A sync interrupted
    half-way is completed by the next one, because every plan is worked out afresh from
    the stored state.
    """
    at = _now(now)
    current_by_id: dict[str, Member] = {}
    for m in current:
        current_by_id.setdefault(m.member_id, m)

    # The registry row and the first members go in one transaction, so a snapshot list
    # can never be recorded as synced without the members it took.
    with engine.begin() as conn:
        first, followed_snapshot_at = _record_list(conn, info, at)
        existing = _states(conn, info.slug)
        frozen = membership_frozen(info.mode, first, followed_snapshot_at, snapshot_taken_at)
        if info.mode == "snapshot" and not frozen and snapshot_taken_at is not None:
            conn.execute(
                lists.update()
                .where(lists.c.slug == info.slug)
                .values(snapshot_at=snapshot_taken_at)
            )
        plan = plan_membership(current_by_id, existing, frozen)
        if plan.enter:
            _enter(conn, info, plan.enter, at)
    result = SyncResult(frozen=frozen, entered=len(plan.enter))

    result.left = _set_left_segment(engine, info.slug, plan.leave, True, at)
    result.came_back = _set_left_segment(engine, info.slug, plan.come_back, False, at)

    if info.spec.on_booking and latest_booking:
        # The states as this sync left them, without reading them again: who left or came
        # back does not change a booking move, and each move is checked on the member's
        # fresh row before it is written (staff may have moved them meanwhile).
        # Only members whose patient has a booking can move.
        after_membership = {mid: state for mid, state in existing.items()
                            if state.patient_id in latest_booking}  # fmt: skip
        for m in plan.enter:
            if m.patient_id in latest_booking:
                after_membership[m.member_id] = MemberState(
                    member_id=m.member_id, patient_id=m.patient_id,
                    stage=info.spec.first_stage, left_segment=False, entered_at=at,
                )  # fmt: skip
        for booking in plan_booking_moves(info.spec, after_membership, latest_booking):

            def book(seen: MemberView, booking: BookingMove = booking) -> Change | None:
                # Re-checked on the fresh row: staff may have moved them meanwhile.
                if seen.stage == booking.to_stage:
                    return None
                return Change(
                    kind="moved",
                    values={
                        "stage": booking.to_stage,
                        "stage_since": at,
                        "booking_seen_at": booking.booked_at,
                        **_touch(SYSTEM_ACTOR, at),
                    },
                    from_stage=seen.stage,
                    to_stage=booking.to_stage,
                    note="booked an appointment (on_booking)",
                )

            if change_member(engine, info.slug, booking.member_id, book, SYSTEM_ACTOR, at):
                result.booked += 1

    result.counts = stage_counts(engine, info, info.owner)
    return result


# Rows per statement when many members change at once: well under SQLite's bound
# parameter limit, and short transactions for staff working alongside a sync.
BATCH = 500


def _set_left_segment(
    engine: Engine, slug: str, member_ids: list[str], left: bool, at: datetime
) -> int:
    """Mark members as having left (or come back), a batch per transaction.

    The update bumps `version` in the database (`version + 1` on the row as it is when
    the update gets it), so a staff change racing with the sync is neither lost nor
    overwritten: whichever commits second simply gets the next version. RETURNING gives
    the versions this sync produced for the events.
    """
    changed = 0
    for i in range(0, len(member_ids), BATCH):
        chunk = member_ids[i : i + BATCH]
        with engine.begin() as conn:
            rows = conn.execute(
                members.update()
                .where(
                    members.c.worklist_slug == slug,
                    members.c.member_id.in_(chunk),
                    members.c.left_segment == (not left),
                )
                .values(
                    left_segment=left,
                    left_at=at if left else None,
                    version=members.c.version + 1,
                )
                .returning(members.c.member_id, members.c.version, members.c.stage)
            ).all()
            if rows:
                conn.execute(
                    events.insert(),
                    [
                        _event_row(slug, r.member_id, r.version, at, SYSTEM_ACTOR,
                                   "left_segment" if left else "returned",
                                   to_stage=None if left else r.stage)
                        for r in rows
                    ],
                )  # fmt: skip
            changed += len(rows)
    return changed


def stored_worklist(engine: Engine, slug: str) -> WorkListInfo | None:
    """The work list as last synced (for lists whose definition is gone or not loadable)."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(lists).where(lists.c.slug == slug)).first()
    if row is None:
        return None
    return WorkListInfo(
        slug=row.slug,
        segment_slug=row.segment_slug,
        owner=row.owner,
        visibility=row.visibility,
        mode=row.mode,
        entity=row.entity,
        spec=WorkflowSpec.model_validate(json.loads(row.spec_json)),
    )


def stored_worklist_slugs(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(lists.c.slug)).scalars())


@dataclass
class TasksOnCards:
    put: int = 0
    # Members not on any work list of the segment (no list, or not synced yet).
    not_on_a_list: int = 0
    # Assignees the list cannot take (a private list's non-owner): left unassigned.
    not_assigned: int = 0


def put_tasks_on_cards(
    engine: Engine,
    items: Iterable[Mapping[str, Any]],
    now: datetime | None = None,
) -> tuple[TasksOnCards, list[str]]:
    """Each task (`task_id`, `segment_slug`, `member_id`, `assignee`, `due_date`, `note`,
    `by`) on its member's card in every work list of the segment: the assignee (when the
    list can take them), the due date, and a note naming the task. Returns the counts and
    the ids of the tasks done: on a card, or with no work list to go on."""
    out, done = TasksOnCards(), []
    by_segment: dict[str, list[WorkListInfo]] = {}
    for slug in stored_worklist_slugs(engine):
        info = stored_worklist(engine, slug)
        if info is not None:
            by_segment.setdefault(info.segment_slug, []).append(info)
    for item in items:
        infos = by_segment.get(item["segment_slug"], [])
        placed = False
        for info in infos:
            by = item["by"] if info.visibility != "private" else (info.owner or item["by"])
            try:
                with engine.connect() as conn:
                    read_member(conn, info.slug, item["member_id"])
            except MemberNotFoundError:
                continue
            if item.get("assignee"):
                try:
                    assign(engine, info, item["member_id"], item["assignee"], by, now=now)
                except WorkListAccessError:
                    out.not_assigned += 1
            set_due_date(engine, info, item["member_id"], item["due_date"], by, now=now)
            note = f"Task {item['task_id']}" + (f": {item['note']}" if item.get("note") else "")
            add_note(engine, info, item["member_id"], note, by, now=now)
            placed = True
        out.put += placed
        out.not_on_a_list += not placed
        # A member not on its segment's list yet may be once the list is synced: kept
        # for the next time. A segment with no work list has no card to wait for.
        if placed or not infos:
            done.append(item["task_id"])
    return out, done
