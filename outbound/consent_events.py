"""Consent learned from the email provider: SendGrid's Event Webhook (docs/outbound.md).

A bounce, a drop, a spam report or an unsubscribe (one-click or through a suppression
group) becomes a learned email opt-out of the patient the message went to, kept in the
state store with its reason and time: no later warehouse rebuild or extract brings the
address back, and the next plan suppresses it. A group resubscribe lifts only what a
group unsubscribe set. Every event is applied once (SendGrid delivers at least once and
in any order): `sg_event_id` is remembered, and an event older than what it would undo
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, UTCDateTime, migrate, register_migrations
from outbound import pauses
from outbound.ledger import insert_ignoring_duplicates, learned_opt_outs, ledger

COMPONENT = "sendgrid_events"

# Event → the reason an address stops getting email.
SUPPRESSING = {
    "bounce": "bounced", "dropped": "dropped by the provider", "spamreport": "reported as spam",
    "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed from a group",
}  # fmt: skip
RESUBSCRIBE = "group_resubscribe"
SOURCE_PREFIX = "sendgrid "

meta = sa.MetaData()
seen = sa.Table(
    "sendgrid_events_seen",
    meta,
    sa.Column("sg_event_id", sa.String(200), primary_key=True),
    sa.Column("event", sa.String(40), nullable=False),
    sa.Column("patient_id", sa.String(200), nullable=True),
    # When it happened, as SendGrid says; when it arrived here.
    sa.Column("happened_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    # The campaign of the message it is about (from its ledger row), when known.
    sa.Column("campaign", sa.String(200), nullable=True),
)


def _create(conn: Connection) -> None:
    # Version 1's table, as version 1 made it (the campaign column is version 2's).
    md = sa.MetaData()
    sa.Table("sendgrid_events_seen", md, *(c.copy() for c in seen.columns
                                             if c.name != "campaign"))  # fmt: skip
    md.create_all(conn)


def _add_campaign(conn: Connection) -> None:
    conn.execute(sa.text("ALTER TABLE sendgrid_events_seen ADD COLUMN campaign VARCHAR(200)"))


register_migrations(
    COMPONENT,
    [Migration(1, "SendGrid events already applied, by sg_event_id", _create),
     Migration(2, "the campaign of each event, for complaint rates", _add_campaign)],
)  # fmt: skip

# A campaign whose spam reports pass this share of its messages over the window pauses
# itself (OUTBOUND_COMPLAINT_RATE).
DEFAULT_COMPLAINT_RATE = 0.001
COMPLAINT_WINDOW_DAYS = 30


@dataclass
class Applied:
    received: int = 0
    duplicates: int = 0
    suppressed: int = 0
    resubscribed: int = 0
    # Consent events whose patient could not be told (no ledger id, unknown address).
    unmatched: int = 0
    # Events that say nothing about consent (delivered, open, ...), or malformed ones.
    ignored: int = 0
    # Campaigns this batch's spam reports paused (their complaint rate passed the limit).
    paused: list[str] = field(default_factory=list)


def _when(event: dict) -> datetime:
    stamp = event.get("timestamp")
    if isinstance(stamp, int | float) and not isinstance(stamp, bool) and 0 < stamp < 2**33:
        return datetime.fromtimestamp(stamp, UTC)
    return datetime.now(UTC)


def apply_events(
    engine: Engine,
    events: Sequence[object],
    patients_with_email: Callable[[str], list[str]],
    now: datetime | None = None,
    group_categories: Mapping[int, str] | None = None,
    complaint_rate: float | None = DEFAULT_COMPLAINT_RATE,
) -> Applied:
    """Apply a verified batch of SendGrid events. `patients_with_email(address)` names
    the patients an address belongs to, for events that carry no ledger id;
    `group_categories` the unsubscribe category of each suppression group: a group
    unsubscribe (or resubscribe) of a known group is an opt-out of its category only. A
    campaign whose spam reports pass `complaint_rate` of its messages over the last 30
    days pauses itself (None: never)."""
    from outbound.categories import CATEGORIES

    # Only a category a patient may leave: any other group's events opt out of email.
    groups = {g: c for g, c in (group_categories or {}).items()
              if c in CATEGORIES and not CATEGORIES[c].transactional}  # fmt: skip
    complained: set[str] = set()
    migrate(engine, [COMPONENT, pauses.COMPONENT])
    now = now or datetime.now(UTC)
    out = Applied(received=len(events))
    wanted = []
    for e in events:
        ok = isinstance(e, dict) and isinstance(e.get("sg_event_id"), str) and e["sg_event_id"]
        if not ok or (e.get("event") not in SUPPRESSING and e.get("event") != RESUBSCRIBE):
            out.ignored += 1
            continue
        wanted.append(e)
    # Oldest first: a resubscribe after an unsubscribe in the same batch wins.
    wanted.sort(key=_when)
    with engine.begin() as conn:
        for e in wanted:
            event_id = e["sg_event_id"][:200]
            if conn.execute(sa.select(seen.c.sg_event_id)
                            .where(seen.c.sg_event_id == event_id)).first():  # fmt: skip
                out.duplicates += 1
                continue
            patients = _patients_of(conn, e, patients_with_email)
            happened = _when(e)
            campaign = _campaign_of(conn, e)
            conn.execute(seen.insert().values(
                sg_event_id=event_id, event=e["event"], happened_at=happened, received_at=now,
                patient_id=patients[0] if len(patients) == 1 else None,
                campaign=campaign))  # fmt: skip
            if e["event"] == "spamreport" and campaign:
                complained.add(campaign)
            if not patients:
                out.unmatched += 1
                continue
            category = groups.get(_group_of(e)) if e["event"] in GROUP_EVENTS else None
            if category is not None:
                out_of = _category_event(conn, patients, e, category, happened)
                if e["event"] == RESUBSCRIBE:
                    out.resubscribed += out_of
                else:
                    out.suppressed += out_of
            elif e["event"] == RESUBSCRIBE:
                out.resubscribed += _resubscribe(conn, patients, happened)
            else:
                out.suppressed += _suppress(conn, patients, e, happened)
    if complaint_rate is not None:
        out.paused = [c for c in sorted(complained)
                      if _pause_if_complained(engine, c, complaint_rate, now)]  # fmt: skip
    return out


def _campaign_of(conn: Connection, event: dict) -> str | None:
    ledger_id = event.get("ledger_id")
    if isinstance(ledger_id, str) and ledger_id:
        row = conn.execute(sa.select(ledger.c.campaign).where(ledger.c.id == ledger_id)).first()
        if row is not None:
            return row.campaign
    return None


def complaint_rate_of(engine: Engine, campaign: str, now: datetime) -> tuple[int, int]:
    """(spam reports, messages sent) of a campaign over the last 30 days."""
    since = now - timedelta(days=COMPLAINT_WINDOW_DAYS)
    with engine.connect() as conn:
        reports = conn.execute(sa.select(sa.func.count()).select_from(seen).where(
            seen.c.event == "spamreport", seen.c.campaign == campaign,
            seen.c.happened_at >= since)).scalar_one()  # fmt: skip
        attempted = sa.func.coalesce(ledger.c.attempted_at, ledger.c.created_at)
        sent = conn.execute(sa.select(sa.func.count()).select_from(ledger).where(
            ledger.c.campaign == campaign, ledger.c.status == "sent",
            ledger.c.patient_id.is_not(None), attempted >= since)).scalar_one()  # fmt: skip
    return reports, sent


def _pause_if_complained(engine: Engine, campaign: str, limit: float, now: datetime) -> bool:
    """Pause the campaign when its complaint rate passes `limit`; True when it did."""
    reports, sent = complaint_rate_of(engine, campaign, now)
    if reports == 0 or reports <= limit * max(sent, 1):
        return False
    state = pauses.pause_states(engine).get(campaign)
    if state is not None and state.paused:
        return False
    rate = reports / max(sent, 1)
    pauses.set_paused(engine, campaign, True,
               f"automatically: {reports} spam report(s) for {sent} message(s) in "
               f"{COMPLAINT_WINDOW_DAYS} days ({rate:.2%}, over the {limit:.2%} limit)",
               now)  # fmt: skip
    return True


GROUP_EVENTS = ("group_unsubscribe", RESUBSCRIBE)
GROUP_SOURCE = f"{SOURCE_PREFIX}group_unsubscribe"


def _group_of(event: dict) -> int | None:
    group = event.get("asm_group_id")
    return group if isinstance(group, int) and not isinstance(group, bool) else None


def _category_event(conn: Connection, patients: list[str], event: dict, category: str,
                    at: datetime) -> int:  # fmt: skip
    """A group unsubscribe of a category's group opts out of that category; a resubscribe
    lifts what a group unsubscribe of it set before it. (An unsubscribe that arrives after
    a later resubscribe is kept: the patient is asked again rather than messaged.)"""
    from outbound.ledger import lift_category_opt_outs, record_category_opt_outs

    if event["event"] == RESUBSCRIBE:
        return lift_category_opt_outs(conn, patients, category, [GROUP_SOURCE], before=at)
    return record_category_opt_outs(conn, patients, category, GROUP_SOURCE, at)


def _patients_of(
    conn: Connection, event: dict, patients_with_email: Callable[[str], list[str]]
) -> list[str]:
    ledger_id = event.get("ledger_id")
    if isinstance(ledger_id, str) and ledger_id:
        row = conn.execute(sa.select(ledger.c.patient_id).where(ledger.c.id == ledger_id)).first()
        if row is not None and row.patient_id:
            return [row.patient_id]
    email = event.get("email")
    if isinstance(email, str) and "@" in email:
        return sorted(set(patients_with_email(email.strip().lower())))
    return []


def _suppress(conn: Connection, patients: list[str], event: dict, at: datetime) -> int:
    kind = event["event"]
    # A later resubscribe of the same patient already undid this (events arrive in any
    # order): an older unsubscribe stays undone.
    later = conn.execute(sa.select(seen.c.sg_event_id).where(
        seen.c.event == RESUBSCRIBE, seen.c.patient_id.in_(patients), seen.c.happened_at > at,
    )).first() if kind == "group_unsubscribe" else None  # fmt: skip
    if later is not None:
        return 0
    reason = SUPPRESSING[kind]
    if kind == "bounce" and isinstance(event.get("reason"), str):
        reason = f"bounced: {event['reason'][:120]}"
    rows = [dict(patient_id=p, channel="email", recorded_at=at,
                 source=f"{SOURCE_PREFIX}{kind}: {reason}"[:200]) for p in patients]  # fmt: skip
    # RETURNING names the rows actually inserted (drivers' row counts differ here).
    stmt = insert_ignoring_duplicates(conn, learned_opt_outs).returning(
        learned_opt_outs.c.patient_id)
    return len(conn.execute(stmt, rows).all())


def _resubscribe(conn: Connection, patients: list[str], at: datetime) -> int:
    """Lift the email opt-outs a group unsubscribe set before `at`, and nothing else (a
    bounce or a spam report stays)."""
    result = conn.execute(learned_opt_outs.delete().where(
        learned_opt_outs.c.patient_id.in_(patients),
        learned_opt_outs.c.channel == "email",
        learned_opt_outs.c.source.like(f"{SOURCE_PREFIX}group_unsubscribe%"),
        learned_opt_outs.c.recorded_at <= at,
    ))  # fmt: skip
    return result.rowcount or 0
