"""Staff tasks: a campaign's members as work for staff, instead of or beside messages.

A campaign with `tasks` makes one task per member of its segment (a case, or a patient)
each day it runs in its send window: an assignee, a due date, a note. Each task is kept
in the state store (`outbound_tasks`) under an id made of the campaign, the member and
the day, so a re-run makes none twice. The pipeline then sets the assignee, due date and
note on the member's work-list card, and, with TASKS_WEBHOOK_URL set, posts every task
to a third-party task system:

- one JSON object per request (`task_id`, `campaign`, `title`, `patient_id`, `case_id`,
  `assignee`, `due_date`, `note`, `card_url`): ids and links, no names or addresses;
- signed: `X-Audiences-Timestamp` and `X-Audiences-Signature: sha256=<hex HMAC-SHA256
  of "<timestamp>.<body>" with TASKS_WEBHOOK_SECRET>`; `Idempotency-Key: <task_id>`, so
  the receiver can drop a task it already has;
- retried: a connection failure, a timeout, 429 or 5xx is tried again (backoff) in the
  run, and by later runs up to MAX_ATTEMPTS in all; a 2xx delivers it; another 4xx
  fails it (the answer is kept, the receiver refused it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time as time_mod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, UTCDateTime, migrate, register_migrations

COMPONENT = "staff_tasks"
PENDING, POSTING, DELIVERED, FAILED = "pending", "posting", "delivered", "failed"
# A claim older than this is of a run that died while posting: the task is pending again.
CLAIM_STALE = timedelta(minutes=15)
# Requests for one task, over every run, before it is given up (failed).
MAX_ATTEMPTS = 8

meta = sa.MetaData()
tasks = sa.Table(
    "outbound_tasks",
    meta,
    sa.Column("task_id", sa.String(300), primary_key=True),
    sa.Column("campaign", sa.String(200), nullable=False),
    sa.Column("segment_slug", sa.String(200), nullable=False),
    sa.Column("member_id", sa.String(200), nullable=False),
    sa.Column("patient_id", sa.String(200), nullable=True),
    sa.Column("case_id", sa.String(200), nullable=True),
    sa.Column("assignee", sa.String(320), nullable=True),
    sa.Column("due_date", sa.Date, nullable=False),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # Whether the card on the work list has it (the pipeline sets it once).
    sa.Column("on_card", sa.Boolean, nullable=False, server_default=sa.false()),
    # The outgoing webhook: pending / posting / delivered / failed, how often tried, the
    # last answer; a run claims a task (posting, with when) before it posts it.
    sa.Column("webhook_status", sa.String(16), nullable=False),
    sa.Column("claimed_at", UTCDateTime, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
)


def _create(conn: Connection) -> None:
    meta.create_all(conn)


register_migrations(COMPONENT, [Migration(1, "staff tasks and their outgoing webhook", _create)])


@dataclass(frozen=True)
class Task:
    task_id: str
    campaign: str
    title: str
    segment_slug: str
    member_id: str
    patient_id: str | None
    case_id: str | None
    assignee: str | None
    due_date: date
    note: str | None

    def payload(self, web_app_url: str | None) -> dict:
        from urllib.parse import quote

        card = (f"{web_app_url}/worklists/{quote(self.segment_slug, safe='')}/cards/"
                f"{quote(self.member_id, safe='')}" if web_app_url else None)  # fmt: skip
        return {
            "task_id": self.task_id, "campaign": self.campaign, "title": self.title,
            "patient_id": self.patient_id, "case_id": self.case_id, "assignee": self.assignee,
            "due_date": self.due_date.isoformat(), "note": self.note, "card_url": card,
        }  # fmt: skip


def task_id(campaign: str, member_id: str, day: date) -> str:
    return f"{campaign}:{member_id}:{day.isoformat()}"


def create_tasks(engine: Engine, new: Sequence[Task], now: datetime | None = None) -> list[Task]:
    """Keep these tasks; returns the ones that did not exist yet (a re-run makes none)."""
    from outbound.ledger import insert_ignoring_duplicates

    migrate(engine, [COMPONENT])
    if not new:
        return []
    at = now or datetime.now(UTC)
    rows = [dict(task_id=t.task_id, campaign=t.campaign, segment_slug=t.segment_slug,
                 member_id=t.member_id, patient_id=t.patient_id, case_id=t.case_id,
                 assignee=t.assignee, due_date=t.due_date, note=t.note, created_at=at,
                 on_card=False, webhook_status=PENDING, attempts=0) for t in new]  # fmt: skip
    made: set[str] = set()
    with engine.begin() as conn:
        for i in range(0, len(rows), 500):
            stmt = insert_ignoring_duplicates(conn, tasks).returning(tasks.c.task_id)
            made |= {r.task_id for r in conn.execute(stmt, rows[i : i + 500])}
    return [t for t in new if t.task_id in made]


def _task_of(row, titles: dict[str, str]) -> Task:  # noqa: ANN001 - a row of outbound_tasks
    return Task(row.task_id, row.campaign, titles.get(row.campaign, row.campaign),
                row.segment_slug, row.member_id, row.patient_id, row.case_id, row.assignee,
                row.due_date, row.note)  # fmt: skip


def tasks_not_on_cards(engine: Engine) -> list[Task]:
    migrate(engine, [COMPONENT])
    with engine.connect() as conn:
        return [_task_of(r, {}) for r in conn.execute(
            sa.select(tasks).where(tasks.c.on_card == sa.false()).order_by(tasks.c.task_id))]


def mark_on_card(engine: Engine, ids: Sequence[str]) -> None:
    with engine.begin() as conn:
        for i in range(0, len(ids), 500):
            conn.execute(tasks.update().where(tasks.c.task_id.in_(list(ids[i : i + 500])))
                         .values(on_card=True))  # fmt: skip


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


@dataclass
class Delivery:
    delivered: int = 0
    failed: int = 0
    # Left pending for a later run (the receiver unreachable or busy).
    waiting: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class TaskWebhook:
    """The outgoing webhook of a third-party task system."""

    url: str
    secret: str = field(repr=False)
    web_app_url: str | None = None
    timeout: float = 10.0
    attempts_per_run: int = 3
    base_delay: float = 1.0
    sleep: Callable[[float], None] = time_mod.sleep
    clock: Callable[[], float] = time_mod.time
    titles: dict[str, str] = field(default_factory=dict)
    # Seconds one run spends delivering at most.
    run_budget: float = 120.0

    def _post(self, task: Task) -> tuple[str, str | None]:
        """(delivered | failed | retry, what went wrong)."""
        body = json.dumps(task.payload(self.web_app_url), separators=(",", ":")).encode()
        stamp = str(int(self.clock()))
        # Header values are ASCII: an id with other characters travels percent-encoded.
        key = quote(task.task_id, safe=":-_.~")
        headers = {"Content-Type": "application/json", "X-Audiences-Timestamp": stamp,
                   "X-Audiences-Signature": sign(self.secret, stamp, body),
                   "Idempotency-Key": key}  # fmt: skip
        try:
            answer = requests.post(self.url, data=body, headers=headers, timeout=self.timeout,
                                   allow_redirects=False)  # fmt: skip
        except (requests.RequestException, ValueError, OSError) as e:
            return "retry", f"could not deliver ({type(e).__name__})"
        if 200 <= answer.status_code < 300:
            return DELIVERED, None
        if answer.status_code == 429 or answer.status_code >= 500:
            return "retry", f"HTTP {answer.status_code}"
        return FAILED, f"HTTP {answer.status_code}: {answer.text[:200]}"

    @staticmethod
    def _claim(engine: Engine, task_id: str, at: datetime) -> bool:
        """Take the task for this run (another run delivering at the same time skips it)."""
        with engine.begin() as conn:
            moved = conn.execute(tasks.update().where(
                tasks.c.task_id == task_id,
                sa.or_(tasks.c.webhook_status == PENDING,
                       sa.and_(tasks.c.webhook_status == POSTING,
                               tasks.c.claimed_at < at - CLAIM_STALE)),
            ).values(webhook_status=POSTING, claimed_at=at))  # fmt: skip
            return bool(moved.rowcount)

    def deliver(self, engine: Engine, now: datetime | None = None) -> Delivery:
        """Post every pending task, oldest first, each claimed before it is posted; at
        most `run_budget` seconds in all (what is left waits for a later run)."""
        migrate(engine, [COMPONENT])
        out = Delivery()
        started = self.clock()
        with engine.connect() as conn:
            q = sa.select(tasks).where(tasks.c.webhook_status.in_([PENDING, POSTING]))
            pending = conn.execute(q.order_by(tasks.c.created_at, tasks.c.task_id)).all()
        for row in pending:
            task = _task_of(row, self.titles)
            if self.clock() - started > self.run_budget:
                out.waiting += 1
                continue
            if not self._claim(engine, task.task_id, now or datetime.now(UTC)):
                continue
            attempts, outcome, error = row.attempts, "retry", None
            for n in range(self.attempts_per_run):
                if attempts >= MAX_ATTEMPTS:
                    break
                if n:
                    self.sleep(self.base_delay * 2 ** (n - 1))
                attempts += 1
                outcome, error = self._post(task)
                if outcome != "retry":
                    break
            if outcome == "retry" and attempts >= MAX_ATTEMPTS:
                outcome, error = FAILED, f"gave up after {attempts} attempts: {error}"
            status = PENDING if outcome == "retry" else outcome
            done_at = (now or datetime.now(UTC)) if status == DELIVERED else None
            with engine.begin() as conn:
                conn.execute(tasks.update().where(tasks.c.task_id == task.task_id).values(
                    webhook_status=status, attempts=attempts, last_error=error,
                    delivered_at=done_at))  # fmt: skip
            if status == DELIVERED:
                out.delivered += 1
            elif status == FAILED:
                out.failed += 1
                out.errors.append(f"task {task.task_id}: {error}")
            else:
                out.waiting += 1
        return out


def tasks_for(campaign, members: Sequence[tuple[str, str | None]], day: date) -> list[Task]:  # noqa: ANN001
    """The tasks of a campaign (with `tasks`) for its members (patient_id, case_id) on
    `day`: the case is the member of a case segment, the patient otherwise."""
    spec = campaign.tasks
    due = day + timedelta(days=spec.due_in_days)
    out = []
    for patient_id, case_id in members:
        member = case_id or patient_id
        out.append(Task(task_id(campaign.slug, member, day), campaign.slug, campaign.name,
                        campaign.segment, member, patient_id, case_id, spec.assignee, due,
                        spec.note))  # fmt: skip
    return out
