"""The send ledger, learned opt-outs and the send lock, kept in the state store
(component `outbound`).

A ledger row is one message: (campaign, recipient, send date) is unique, which is what
makes sending idempotent. Its status moves `pending` → `sent` (2xx) or `failed`; a
`pending` row left by a run that never finished becomes `unknown` and is never resent
automatically. A `failed` row is `retryable` only when the request provably never reached
the provider (no connection, or rate-limited): a later run of the same day tries it again,
a few times at most. `sandbox` rows went through SendGrid's sandbox: nothing was
delivered, so they do not count toward the frequency cap. `attempted_at` is when the
latest request for the row was made: the frequency cap counts by it, in real time.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, register_migrations

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


# Version 3 adds when the latest request was made, how many were made, and whether a
# failure may be tried again.
_LEDGER_V3_COLUMNS = (
    sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("retryable", sa.Boolean, nullable=False, server_default=sa.false()),
)


def _ledger_v3(md: sa.MetaData) -> sa.Table:
    table = _ledger_v1(md)
    for column in _LEDGER_V3_COLUMNS:
        table.append_column(column.copy())
    sa.Index("ix_outbound_ledger_attempted_at", table.c.attempted_at)
    return table


def _add_ledger_v3_columns(conn: Connection) -> None:
    table = _ledger_v1(sa.MetaData())
    for column in _LEDGER_V3_COLUMNS:
        ddl = sa.schema.CreateColumn(column.copy()).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
    conn.execute(sa.text(f"UPDATE {table.name} SET attempted_at = created_at"))
    conn.execute(
        sa.text(f"CREATE INDEX ix_outbound_ledger_attempted_at ON {table.name} (attempted_at)")
    )


# Version 5 adds what the provider last said of a message after taking it (Twilio's
# status callbacks: queued, sent, delivered, undelivered, failed; read for WhatsApp), its
# error code, and when it said so.
_LEDGER_V5_COLUMNS = (
    sa.Column("provider_status", sa.String(16), nullable=True),
    sa.Column("provider_error", sa.String(32), nullable=True),
    sa.Column("provider_status_at", sa.DateTime(timezone=True), nullable=True),
)


def _ledger_v5(md: sa.MetaData) -> sa.Table:
    table = _ledger_v3(md)
    for column in _LEDGER_V5_COLUMNS:
        table.append_column(column.copy())
    sa.Index("ix_outbound_ledger_provider_message_id", table.c.provider_message_id)
    return table


# Version 8 adds the address a message went to, as the plan keys addresses
# (`sms:+61...`, `email:...`): the cap counts it for that address even after the patient
# record's address changes.
_LEDGER_V8_COLUMN = sa.Column("address_key", sa.String(320), nullable=True)


def _ledger_v8(md: sa.MetaData) -> sa.Table:
    table = _ledger_v5(md)
    table.append_column(_LEDGER_V8_COLUMN.copy())
    return table


def _add_ledger_v8_column(conn: Connection) -> None:
    ddl = sa.schema.CreateColumn(_LEDGER_V8_COLUMN.copy()).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE outbound_ledger ADD COLUMN {ddl}"))


def _add_ledger_v5_columns(conn: Connection) -> None:
    for column in _LEDGER_V5_COLUMNS:
        ddl = sa.schema.CreateColumn(column.copy()).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE outbound_ledger ADD COLUMN {ddl}"))
    conn.execute(sa.text(
        "CREATE INDEX ix_outbound_ledger_provider_message_id ON outbound_ledger "
        "(provider_message_id)"))  # fmt: skip


def _category_opt_outs_v6(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "outbound_category_opt_outs",
        md,
        sa.Column("patient_id", sa.String(200), primary_key=True),
        # An unsubscribe category (outbound/categories.py), or `all` commercial ones.
        sa.Column("category", sa.String(64), primary_key=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
    )


def _opt_ins_v7(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "outbound_opt_ins",
        md,
        sa.Column("patient_id", sa.String(200), primary_key=True),
        # The channel that needs a yes of its own: whatsapp.
        sa.Column("channel", sa.String(32), primary_key=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
    )


def _send_lock_v4(md: sa.MetaData) -> sa.Table:
    return sa.Table(
        "outbound_send_lock",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(36), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )


# The tables as the code uses them. Each migration creates its tables from the builder of
# its own version; when a table changes, add a migration and keep the old builder as it
# was, so that version 1 always creates what version 1 created.
metadata = sa.MetaData()
ledger = _ledger_v8(metadata)
learned_opt_outs = _opt_outs_v2(metadata)
send_lock = _send_lock_v4(metadata)
category_opt_outs = _category_opt_outs_v6(metadata)
opt_ins = _opt_ins_v7(metadata)


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
        Migration(3, "ledger: time of the latest request, attempts, retryable failures",
                  _add_ledger_v3_columns),
        Migration(4, "one send run at a time", _create(_send_lock_v4)),
        Migration(5, "ledger: the provider's delivery status", _add_ledger_v5_columns),
        Migration(6, "opt-outs of unsubscribe categories", _create(_category_opt_outs_v6)),
        Migration(7, "opt-ins of channels that need one (WhatsApp)", _create(_opt_ins_v7)),
        Migration(8, "ledger: the address each message went to", _add_ledger_v8_column),
    ],
)  # fmt: skip

# A failure that never reached the provider is tried again by later runs of the day, up to
# this many requests in all.
MAX_ATTEMPTS = 3


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
    # The address it goes to, as the plan keys it (`sms:+61...`); None for staff digests.
    address_key: str | None = None


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


def retryable_rows(engine: Engine, send_date: date) -> dict[tuple[str, str], str]:
    """(campaign, recipient) → id of the day's failed rows that may be tried again."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(ledger.c.campaign, ledger.c.recipient, ledger.c.id).where(
                ledger.c.send_date == send_date,
                ledger.c.status == FAILED,
                ledger.c.retryable.is_(True),
                ledger.c.attempts < MAX_ATTEMPTS,
            )
        )
        return {(r.campaign, r.recipient): r.id for r in rows}


def mark_abandoned_unknown(engine: Engine, run_id: str, now: datetime | None = None) -> int:
    """Turn `pending` rows of other runs (which crashed: only one send run holds the send
    lock at a time) into `unknown`; returns how many."""
    with engine.begin() as conn:
        res = conn.execute(
            ledger.update()
            .where(ledger.c.status == PENDING, ledger.c.run_id != run_id)
            .values(status=UNKNOWN, updated_at=now or _now())
        )
        return res.rowcount or 0


def insert_ignoring_duplicates(  # noqa: ANN202 - a dialect insert
    conn: Connection, table: sa.Table, keys: Sequence[str] | None = None
):
    """INSERT ... ON CONFLICT (`keys`, default the primary key) DO NOTHING, in the state
    store's dialect."""
    keys = list(keys or [c.name for c in table.primary_key.columns])
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
    raise NotImplementedError(f"state store dialect {conn.dialect.name!r} is not supported")


def insert_pending(
    engine: Engine,
    entries: Sequence[LedgerEntry],
    send_date: date,
    run_id: str,
    now: datetime | None = None,
) -> list[str | None]:
    """Write `pending` rows before the request; returns their ids in the same order, None
    where the ledger already holds that message (written by another run): that one is
    not to be sent.

    The unique key (campaign, recipient, send date) is what decides: a message is sent
    only by the run whose row it is.
    """
    now = now or _now()
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
            "address_key": e.address_key,
            "send_date": send_date,
            "status": PENDING,
            "error": None,
            "provider_message_id": None,
            "run_id": run_id,
            "created_at": now,
            "updated_at": now,
            "attempted_at": now,
            "attempts": 1,
            "retryable": False,
        }
        for i, e in zip(ids, entries, strict=True)
    ]
    if not rows:
        return []
    with engine.begin() as conn:
        one_per_message = ["campaign", "recipient", "send_date"]
        conn.execute(insert_ignoring_duplicates(conn, ledger, one_per_message), rows)
        mine = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            found = conn.execute(sa.select(ledger.c.id).where(ledger.c.id.in_(chunk)))
            mine |= set(found.scalars())
    return [i if i in mine else None for i in ids]


def claim_retries(
    engine: Engine, ids: Iterable[str], run_id: str, now: datetime | None = None
) -> list[str]:
    """Take failed, retryable rows for this run (back to `pending`); returns the ids taken.

    Each row is taken only if it is still failed and retryable, so no two runs retry the
    same message.
    """
    now = now or _now()
    taken = []
    with engine.begin() as conn:
        for row_id in ids:
            res = conn.execute(
                ledger.update()
                .where(
                    ledger.c.id == row_id,
                    ledger.c.status == FAILED,
                    ledger.c.retryable.is_(True),
                    ledger.c.attempts < MAX_ATTEMPTS,
                )
                .values(
                    status=PENDING, run_id=run_id, attempts=ledger.c.attempts + 1,
                    attempted_at=now, updated_at=now, error=None, retryable=False,
                )
            )  # fmt: skip
            if res.rowcount:
                taken.append(row_id)
    return taken


def set_status(
    engine: Engine,
    ids: Iterable[str],
    status: str,
    error: str | None = None,
    provider_message_id: str | None = None,
    retryable: bool = False,
    now: datetime | None = None,
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
                    retryable=retryable,
                    updated_at=now or _now(),
                )
            )


# The order a provider's delivery statuses come in: a status never moves a row back, so
# callbacks may arrive in any order. The final ones share a rank: the first to arrive stays.
PROVIDER_STATUS_RANK = {
    "accepted": 0, "scheduled": 0, "queued": 1, "sending": 2, "sent": 3,
    "delivered": 4, "undelivered": 4, "failed": 4, "read": 5,
}  # fmt: skip


def advance_provider_status(
    engine: Engine,
    provider_message_id: str,
    status: str,
    error_code: str | None = None,
    now: datetime | None = None,
) -> tuple[str | None, str] | None:
    """Record what the provider says of a message, only when it moves the row forward.
    Returns the row's (patient id, channel) when it moved (None: unknown message, unknown
    status, or not forward)."""
    rank = PROVIDER_STATUS_RANK.get(status)
    if rank is None or not provider_message_id:
        return None
    behind = [s for s, r in PROVIDER_STATUS_RANK.items() if r < rank]
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(ledger.c.id, ledger.c.patient_id, ledger.c.channel).where(
                ledger.c.provider_message_id == provider_message_id
            )
        ).first()
        if row is None:
            return None
        moved = conn.execute(
            ledger.update()
            .where(
                ledger.c.id == row.id,
                sa.or_(ledger.c.provider_status.is_(None), ledger.c.provider_status.in_(behind)),
            )
            .values(provider_status=status, provider_error=(error_code or None),
                    provider_status_at=now or _now())
        )  # fmt: skip
        return (row.patient_id, row.channel) if moved.rowcount else None


# -- one send run at a time ---------------------------------------------------------------

SEND_LOCK = "send"
# A holder that has not shown a sign of life for this long has crashed: its lock is taken.
SEND_LOCK_STALE = timedelta(minutes=15)


class SendLockHeld(RuntimeError):
    """Another send run holds the lock; the message says which and since when."""


def acquire_send_lock(engine: Engine, holder: str, now: datetime | None = None) -> None:
    now = now or _now()
    row = {
        "name": SEND_LOCK, "holder": holder, "host": socket.gethostname()[:200],
        "pid": os.getpid(), "acquired_at": now, "heartbeat_at": now,
    }  # fmt: skip
    with engine.begin() as conn:
        current = conn.execute(sa.select(send_lock).where(send_lock.c.name == SEND_LOCK)).first()
        if current is None:
            # RETURNING tells whether this insert took the row (rowcount does not, for an
            # INSERT ... ON CONFLICT DO NOTHING on every driver).
            inserted = conn.execute(
                insert_ignoring_duplicates(conn, send_lock)
                .values(**row)
                .returning(send_lock.c.holder)
            ).first()
            if inserted is not None:
                return
            current = conn.execute(
                sa.select(send_lock).where(send_lock.c.name == SEND_LOCK)
            ).first()
        if now - _as_utc(current.heartbeat_at) > SEND_LOCK_STALE or _holder_died(current):
            taken = conn.execute(
                send_lock.update()
                .where(
                    send_lock.c.name == SEND_LOCK,
                    send_lock.c.holder == current.holder,
                    send_lock.c.heartbeat_at == current.heartbeat_at,
                )
                .values(**row)
                .returning(send_lock.c.holder)
            ).first()
            if taken is not None:
                return
        started = _as_utc(current.acquired_at)
        raise SendLockHeld(
            f"another send run (pid {current.pid} on {current.host}, started "
            f"{started.isoformat(timespec='seconds')}) is sending; nothing was sent by this "
            "run. Wait for it to finish; the lock of a run that crashed is taken over at once "
            f"on the same machine, and after {int(SEND_LOCK_STALE.total_seconds() // 60)} "
            "minutes without a sign of life from another machine"
        )


def _holder_died(current) -> bool:  # noqa: ANN001 - a row of send_lock
    """A holder on this machine whose process is gone (killed, crashed) holds nothing."""
    if current.host != socket.gethostname()[:200]:
        return False
    try:
        os.kill(current.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, under another user
    return False


def heartbeat_send_lock(engine: Engine, holder: str, now: datetime | None = None) -> None:
    """A sign of life of the run holding the lock (the real time, by default)."""
    with engine.begin() as conn:
        conn.execute(
            send_lock.update()
            .where(send_lock.c.name == SEND_LOCK, send_lock.c.holder == holder)
            .values(heartbeat_at=now or _now())
        )


def release_send_lock(engine: Engine, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            send_lock.delete().where(send_lock.c.name == SEND_LOCK, send_lock.c.holder == holder)
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


def ledger_by_day(
    engine: Engine, since: date, until: date, campaigns: list[str]
) -> list[tuple[date, str, dict[str, int]]]:
    """Messages per send day (from `since` to `until`) and campaign, counted by status
    (sent, failed, unknown, pending; every other status, e.g. sandbox, as `other`),
    newest day first."""
    q = (
        sa.select(ledger.c.send_date, ledger.c.campaign, ledger.c.status, sa.func.count())
        .where(ledger.c.send_date >= since, ledger.c.send_date <= until,
               ledger.c.campaign.in_(campaigns))
        .group_by(ledger.c.send_date, ledger.c.campaign, ledger.c.status)
    )  # fmt: skip
    out: dict[tuple[date, str], dict[str, int]] = {}
    with engine.connect() as conn:
        for day, campaign, status, n in conn.execute(q):
            kind = status if status in (SENT, FAILED, UNKNOWN, PENDING) else "other"
            counts = out.setdefault((day, campaign), {})
            counts[kind] = counts.get(kind, 0) + n
    return [(d, c, n) for (d, c), n in sorted(out.items(), key=lambda kv: (-kv[0][0].toordinal(),
                                                                          kv[0][1]))]  # fmt: skip


HISTORY_SCHEMA = {
    "campaign": pl.String,
    "recipient": pl.String,
    "send_date": pl.Date,
    "status": pl.String,
    "attempted_at": pl.Datetime("us", "UTC"),
}


def read_history(engine: Engine, since: datetime) -> pl.DataFrame:
    """What the frequency cap needs: every message requested at or after `since` (real
    time), whatever day it was planned for."""
    attempted = sa.func.coalesce(ledger.c.attempted_at, ledger.c.created_at)
    q = sa.select(
        ledger.c.campaign, ledger.c.recipient, ledger.c.send_date, ledger.c.status,
        attempted.label("attempted_at"), ledger.c.channel, ledger.c.address_key,
    ).where(attempted >= since)  # fmt: skip
    with engine.connect() as conn:
        rows = [(*r[:4], _as_utc(r[4]), *r[5:]) for r in conn.execute(q)]
    schema = HISTORY_SCHEMA | {"channel": pl.String, "address_key": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")


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


OPT_OUT_CHANNELS = ("email", "sms", "whatsapp", "all")


def normalise_opt_out(patient_id: str, channel: str) -> tuple[str, str]:
    """(patient id, channel) as they are compared: blanks trimmed, the channel lower-cased.
    A channel that is not one of email / sms / whatsapp / all is refused."""
    ident = (patient_id or "").strip()
    kind = (channel or "").strip().lower()
    if not ident:
        raise ValueError("an opt-out needs a patient id")
    if kind not in OPT_OUT_CHANNELS:
        raise ValueError(
            f"opt-out channel {channel!r} is not one of {', '.join(OPT_OUT_CHANNELS)}"
        )
    return ident, kind


def record_opt_out(
    engine: Engine, patient_id: str, channel: str, source: str, now: datetime | None = None
) -> None:
    """Remember an opt-out learned outside the extract (unsubscribe link, reply)."""
    patient_id, channel = normalise_opt_out(patient_id, channel)
    remember_opt_outs(engine, [(patient_id, channel)], source, now)


def remember_opt_outs(
    engine: Engine, opt_outs: Sequence[tuple[str, str]], source: str, now: datetime | None = None
) -> int:
    """Keep these (patient id, channel) opt-outs for good, once each; returns how many were
    new. Opt-outs are compared normalised (`normalise_opt_out`)."""
    wanted = {normalise_opt_out(p, c) for p, c in opt_outs}
    if not wanted:
        return 0
    known = set(map(tuple, read_learned_opt_outs(engine).iter_rows()))
    new = sorted(wanted - known)
    stamp = now or _now()
    with engine.begin() as conn:
        for i in range(0, len(new), 1000):
            rows = [dict(patient_id=p, channel=c, recorded_at=stamp, source=source)
                    for p, c in new[i : i + 1000]]  # fmt: skip
            # Two runs may remember the same opt-out at once: the second finds it there.
            stmt = insert_ignoring_duplicates(conn, learned_opt_outs)
            conn.execute(stmt, rows)
    return len(new)


def forget_opt_out(engine: Engine, patient_id: str, channel: str) -> int:
    """Remove a kept opt-out (as stored, blanks and case aside); returns rows removed."""
    patient_id, channel = normalise_opt_out(patient_id, channel)
    with engine.begin() as conn:
        res = conn.execute(
            learned_opt_outs.delete().where(
                sa.func.trim(learned_opt_outs.c.patient_id) == patient_id,
                sa.func.lower(sa.func.trim(learned_opt_outs.c.channel)) == channel,
            )
        )
        return res.rowcount or 0


def learned_consent_of(engine: Engine, patient_id: str) -> list[tuple[str, str, datetime]]:
    """A patient's kept consent, for people to read, oldest first: (what, source, when),
    what being e.g. `opted out of email`, `left category reactivation`, `opted in to
    whatsapp`."""
    pid = patient_id.strip()
    o, c, i = learned_opt_outs.c, category_opt_outs.c, opt_ins.c
    with engine.connect() as conn:
        rows = [(f"opted out of {r.channel}", r.source or "", _as_utc(r.recorded_at))
                for r in conn.execute(sa.select(o.channel, o.source, o.recorded_at)
                                      .where(sa.func.trim(o.patient_id) == pid))]  # fmt: skip
        rows += [(f"left {'every category' if r.category == 'all' else 'category ' + r.category}",
                  r.source, _as_utc(r.recorded_at))
                 for r in conn.execute(sa.select(c.category, c.source, c.recorded_at)
                                       .where(c.patient_id == pid))]  # fmt: skip
        rows += [(f"opted in to {r.channel}", r.source, _as_utc(r.recorded_at))
                 for r in conn.execute(sa.select(i.channel, i.source, i.recorded_at)
                                       .where(i.patient_id == pid))]  # fmt: skip
    return sorted(rows, key=lambda r: r[2])


CATEGORY_OPT_OUTS_SCHEMA = {"patient_id": pl.String, "category": pl.String}
OPT_IN_CHANNELS = ("whatsapp",)


def record_opt_ins(conn: Connection, patient_ids: Sequence[str], channel: str, source: str,
                   at: datetime) -> int:  # fmt: skip
    """A yes to a channel that needs one (WhatsApp); returns how many were new."""
    if channel not in OPT_IN_CHANNELS:
        raise ValueError(f"{channel!r} needs no opt-in; only {', '.join(OPT_IN_CHANNELS)} does")
    rows = [dict(patient_id=p, channel=channel, recorded_at=at, source=source[:200])
            for p in sorted(set(patient_ids))]  # fmt: skip
    if not rows:
        return 0
    stmt = insert_ignoring_duplicates(conn, opt_ins).returning(opt_ins.c.patient_id)
    return len(conn.execute(stmt, rows).all())


def read_opt_ins(engine: Engine) -> pl.DataFrame:
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(opt_ins.c.patient_id, opt_ins.c.channel))]
    return pl.DataFrame(rows, schema={"patient_id": pl.String, "channel": pl.String},
                        orient="row")  # fmt: skip


def record_category_opt_outs(
    conn: Connection, patient_ids: Sequence[str], category: str, source: str, at: datetime
) -> int:
    """Opt these patients out of an unsubscribe category (or `all`); returns how many
    were new."""
    from outbound.categories import ALL, CATEGORIES

    if category != ALL and (category not in CATEGORIES or CATEGORIES[category].transactional):
        raise ValueError(f"{category!r} is not a category a patient can opt out of")
    rows = [dict(patient_id=p, category=category, recorded_at=at, source=source[:200])
            for p in sorted(set(patient_ids))]  # fmt: skip
    if not rows:
        return 0
    stmt = insert_ignoring_duplicates(conn, category_opt_outs).returning(
        category_opt_outs.c.patient_id)
    return len(conn.execute(stmt, rows).all())


def lift_category_opt_outs(
    conn: Connection, patient_ids: Sequence[str], category: str, sources: Sequence[str],
    before: datetime | None = None,
) -> int:  # fmt: skip
    """Lift the opt-outs of `category` these patients made through `sources` (and, with
    `before`, only those recorded by then); returns how many."""
    c = category_opt_outs.c
    where = [c.patient_id.in_(list(patient_ids)), c.category == category, c.source.in_(sources)]
    if before is not None:
        where.append(c.recorded_at <= before)
    return conn.execute(category_opt_outs.delete().where(*where)).rowcount or 0


def read_category_opt_outs(
    engine: Engine, patient_ids: Sequence[str] | None = None
) -> pl.DataFrame:
    """(patient_id, category) of every category opt-out, or of the given patients'."""
    q = sa.select(category_opt_outs.c.patient_id, category_opt_outs.c.category)
    rows: list[tuple[str, str]] = []
    with engine.connect() as conn:
        if patient_ids is None:
            rows = [tuple(r) for r in conn.execute(q)]
        else:
            ids = sorted(set(patient_ids))
            for i in range(0, len(ids), 500):
                part = q.where(category_opt_outs.c.patient_id.in_(ids[i : i + 500]))
                rows += [tuple(r) for r in conn.execute(part)]
    return pl.DataFrame(rows, schema=CATEGORY_OPT_OUTS_SCHEMA, orient="row")


def read_learned_opt_outs(
    engine: Engine, patient_ids: Sequence[str] | None = None
) -> pl.DataFrame:
    """Opt-outs learned outside the extract, for everyone or for the given patients. Read
    normalised (trimmed, lower-case channel; a channel that is none of the known ones
    counts as `all`), whatever an older version or a hand edit stored."""
    q = sa.select(learned_opt_outs.c.patient_id, learned_opt_outs.c.channel)
    rows: list[tuple[str, str]] = []
    with engine.connect() as conn:
        if patient_ids is None:
            rows = [(r.patient_id, r.channel) for r in conn.execute(q)]
        else:
            ids = sorted({i.strip() for i in patient_ids} | set(patient_ids))
            for i in range(0, len(ids), 500):
                # Stored ids may carry blanks: match them trimmed.
                part = q.where(sa.func.trim(learned_opt_outs.c.patient_id).in_(ids[i : i + 500]))
                rows += [(r.patient_id, r.channel) for r in conn.execute(part)]
    frame = pl.DataFrame(rows, schema={"patient_id": pl.String, "channel": pl.String}, orient="row")
    channel = pl.col("channel").str.strip_chars().str.to_lowercase()
    return frame.select(
        pl.col("patient_id").str.strip_chars(),
        pl.when(channel.is_in(list(OPT_OUT_CHANNELS))).then(channel).otherwise(pl.lit("all"))
        .alias("channel"),
    ).unique()  # fmt: skip
