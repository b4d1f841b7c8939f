"""The send ledger and learned opt-outs, kept in the state store (component `outbound`).

A ledger row is one message: (campaign, recipient, send date) is unique, which is what
makes sending idempotent. Its status moves `pending` → `sent` (2xx) or `failed` (4xx,
retries exhausted); a `pending` row left by an earlier run that never finished becomes
`unknown` and is never resent automatically. `sandbox` rows went through SendGrid's
sandbox: nothing was delivered, so they do not count toward the frequency cap.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from state import Migration, register_migrations

COMPONENT = "outbound"

PENDING, SENT, FAILED, UNKNOWN, SANDBOX = "pending", "sent", "failed", "unknown", "sandbox"
# Statuses that mean a patient may have received the message: they count toward the cap.
DELIVERED_OR_MAYBE = (SENT, PENDING, UNKNOWN)
STAFF_RECIPIENT = "staff"


def _ledger_v1(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "outbound_ledger",
        md,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("campaign", sa.String(200), nullable=False),
        # The patient id, or "staff" for a staff digest.
        sa.Column("recipient", sa.String(200), nullable=False),
        sa.Column("patient_id", sa.String(200), nullable=True),
        sa.Column("case_id", sa.String(200), nullable=True),
        sa.Column("segment_slug", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("send_date", sa.Date, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("provider_message_id", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "campaign", "recipient", "send_date", name="uq_outbound_ledger_message"
        ),
        sa.Index("ix_outbound_ledger_patient_date", "patient_id", "send_date"),
    )


def _opt_outs_v2(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "outbound_opt_outs",
        md,
        sa.Column("patient_id", sa.String(200), primary_key=True),
        # email / sms / whatsapp / all, as in the extract's opt_outs.
        sa.Column("channel", sa.String(32), primary_key=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(200), nullable=True),
    )


# The tables as the code uses them. Each migration creates its tables from the builder of
# its own version; when a table changes, add a migration and keep the old builder as it
# was, so that version 1 always creates what version 1 created.
metadata = sa.MetaData()
ledger = _ledger_v1(metadata)
learned_opt_outs = _opt_outs_v2(metadata)


def _create(builder) -> Callable[[Connection], None]:
    def apply(conn: Connection) -> None:
        md = sa.MetaData()
        builder(md)
        md.create_all(conn)

    return apply


register_migrations(
    COMPONENT,
    [
        Migration(1, "send ledger", _create(_ledger_v1)),
        Migration(2, "opt-outs learned from replies and unsubscribes", _create(_opt_outs_v2)),
    ],
)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class LedgerEntry:
    campaign: str
    recipient: str
    patient_id: str | None
    case_id: str | None
    segment_slug: str
    channel: str


def new_run_id() -> str:
    return str(uuid.uuid4())


def existing_keys(engine: Engine, send_date: date) -> dict[tuple[str, str], str]:
    """(campaign, recipient) → status of every ledger row of a send date."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger.c.campaign, ledger.c.recipient, ledger.c.status).where(
                ledger.c.send_date == send_date
            )
        )
        return {(r.campaign, r.recipient): r.status for r in rows}


def mark_abandoned_unknown(engine: Engine, send_date: date, run_id: str) -> int:
    """Turn `pending` rows of other (crashed) runs into `unknown`; returns how many."""
    with engine.begin() as conn:
        res = conn.execute(
            ledger.update()
            .where(
                ledger.c.send_date == send_date,
                ledger.c.status == PENDING,
                ledger.c.run_id != run_id,
            )
            .values(status=UNKNOWN, updated_at=_now())
        )
        return res.rowcount or 0


def insert_pending(
    engine: Engine, entries: Sequence[LedgerEntry], send_date: date, run_id: str
) -> list[str]:
    """Write `pending` rows before the request; returns their ids in the same order.

    The unique key (campaign, recipient, send date) makes a second insert for the same
    message fail instead of sending twice.
    """
    now = _now()
    ids = [str(uuid.uuid4()) for _ in entries]
    rows = [
        {
            "id": i,
            "campaign": e.campaign,
            "recipient": e.recipient,
            "patient_id": e.patient_id,
            "case_id": e.case_id,
            "segment_slug": e.segment_slug,
            "channel": e.channel,
            "send_date": send_date,
            "status": PENDING,
            "error": None,
            "provider_message_id": None,
            "run_id": run_id,
            "created_at": now,
            "updated_at": now,
        }
        for i, e in zip(ids, entries, strict=True)
    ]
    if rows:
        with engine.begin() as conn:
            conn.execute(ledger.insert(), rows)
    return ids


def set_status(
    engine: Engine,
    ids: Iterable[str],
    status: str,
    error: str | None = None,
    provider_message_id: str | None = None,
) -> None:
    ids = list(ids)
    if not ids:
        return
    with engine.begin() as conn:
        # Chunked so that PostgreSQL / SQLite parameter limits are never reached.
        for i in range(0, len(ids), 500):
            conn.execute(
                ledger.update()
                .where(ledger.c.id.in_(ids[i : i + 500]))
                .values(
                    status=status,
                    error=error,
                    provider_message_id=provider_message_id,
                    updated_at=_now(),
                )
            )


LEDGER_EXPORT_SCHEMA = {
    "id": pl.String,
    "campaign": pl.String,
    "recipient": pl.String,
    "patient_id": pl.String,
    "case_id": pl.String,
    "segment_slug": pl.String,
    "channel": pl.String,
    "send_date": pl.Date,
    "status": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
}


def read_ledger(engine: Engine, since: date | None = None) -> pl.DataFrame:
    """Ledger rows without error texts (which may quote addresses), for planning and export."""
    cols = [ledger.c[name] for name in LEDGER_EXPORT_SCHEMA]
    q = sa.select(*cols)
    if since is not None:
        q = q.where(ledger.c.send_date >= since)
    names = list(LEDGER_EXPORT_SCHEMA)
    stamps = {names.index("created_at"), names.index("updated_at")}
    with engine.connect() as conn:
        # SQLite hands back naive UTC datetimes, PostgreSQL aware ones: make both aware.
        rows = [
            tuple(_as_utc(v) if i in stamps else v for i, v in enumerate(r))
            for r in conn.execute(q)
        ]
    return pl.DataFrame(rows, schema=LEDGER_EXPORT_SCHEMA, orient="row")


HISTORY_COLUMNS = ("campaign", "recipient", "send_date", "status")


def read_history(engine: Engine, since: date) -> pl.DataFrame:
    """What the frequency cap needs: (campaign, recipient, send_date, status) since a date."""
    q = sa.select(*[ledger.c[c] for c in HISTORY_COLUMNS]).where(ledger.c.send_date >= since)
    with engine.connect() as conn:
        columns = list(zip(*conn.execute(q).all(), strict=True)) or [()] * len(HISTORY_COLUMNS)
    return pl.DataFrame(
        {c: list(v) for c, v in zip(HISTORY_COLUMNS, columns, strict=True)},
        schema={c: LEDGER_EXPORT_SCHEMA[c] for c in HISTORY_COLUMNS},
    )


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def ledger_errors(engine: Engine, send_date: date) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger.c.id, ledger.c.error).where(
                ledger.c.send_date == send_date, ledger.c.status == FAILED
            )
        )
        return {r.id: r.error or "" for r in rows}


def record_opt_out(engine: Engine, patient_id: str, channel: str, source: str) -> None:
    """Remember an opt-out learned outside the extract (unsubscribe link, reply)."""
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(learned_opt_outs.c.patient_id).where(
                learned_opt_outs.c.patient_id == patient_id, learned_opt_outs.c.channel == channel
            )
        ).first()
        if exists is None:
            conn.execute(
                learned_opt_outs.insert().values(
                    patient_id=patient_id, channel=channel, recorded_at=_now(), source=source
                )
            )


def read_learned_opt_outs(engine: Engine) -> pl.DataFrame:
    q = sa.select(learned_opt_outs.c.patient_id, learned_opt_outs.c.channel)
    with engine.connect() as conn:
        rows = [(r.patient_id, r.channel) for r in conn.execute(q)]
    return pl.DataFrame(rows, schema={"patient_id": pl.String, "channel": pl.String}, orient="row")
