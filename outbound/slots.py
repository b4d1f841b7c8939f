"""Waitlist slot offers: a cancelled upcoming appointment offered to who is waiting for it.

A campaign with `slot_offers` does not message its whole segment: each run, every freed
slot (an upcoming appointment the extract shows cancelled, and nobody has been booked
into since) is offered to the next `per_slot` waitlist patients it fits, in the order
they joined the waitlist (`added_at`). A waitlist entry fits when its appointment type,
practitioner and location are the slot's, or left open. A patient is offered a slot at
most once, ever (`outbound_slot_offers`, written before the message is requested), and
one slot per run. The message's template sees the slot: `r.slot_starts_at`,
`r.slot_type`, `r.slot_practitioner`, `r.slot_location`.

`match_offers` is pure: frames in, the offers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import duckdb
import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, UTCDateTime, migrate, register_migrations

COMPONENT = "slot_offers"
meta = sa.MetaData()
offers = sa.Table(
    "outbound_slot_offers",
    meta,
    # The slot as a time with a practitioner at a location (the same time cancelled twice
    # is one slot): `<starts_at>|<practitioner>|<location>`.
    sa.Column("slot_key", sa.String(400), primary_key=True),
    sa.Column("patient_id", sa.String(200), primary_key=True),
    sa.Column("appointment_id", sa.String(200), nullable=False),
    sa.Column("campaign", sa.String(200), nullable=False),
    sa.Column("offered_at", UTCDateTime, nullable=False),
)


def _create(conn: Connection) -> None:
    meta.create_all(conn)


register_migrations(COMPONENT, [Migration(1, "waitlist slots offered, once each", _create)])

SLOT_SCHEMA = {
    "slot_key": pl.String, "appointment_id": pl.String, "starts_at": pl.Datetime("us", "UTC"),
    "appointment_type_id": pl.String, "practitioner_id": pl.String, "location_id": pl.String,
    # Who cancelled it: never offered their own slot back.
    "cancelled_by": pl.List(pl.String),
}  # fmt: skip
WAITLIST_SCHEMA = {
    "patient_id": pl.String, "appointment_type_id": pl.String, "practitioner_id": pl.String,
    "location_id": pl.String, "added_at": pl.Datetime("us", "UTC"),
}  # fmt: skip
OFFER_SCHEMA = {"campaign": pl.String, "patient_id": pl.String, "appointment_id": pl.String,
                "slot_key": pl.String}
# What a slot offer's template sees, beside the patient's own fields.
SLOT_FIELDS = ("slot_starts_at", "slot_type", "slot_practitioner", "slot_location")


def read_freed_slots(con: duckdb.DuckDBPyConnection, now: datetime) -> pl.DataFrame:
    """Upcoming times the extract shows cancelled, one row per slot (a time with its
    practitioner and location, however often it was booked and cancelled), that nobody
    holds now: no appointment that is not cancelled overlaps it with the same practitioner
    (or, with no practitioner, at the same location)."""
    frame = con.sql(
        """
        with cancelled as (
            select c.* from raw.appointments c
            where c.cancelled_at is not null and c.starts_at > $now
              and not exists (
                  select 1 from raw.appointments b
                  where b.cancelled_at is null
                    and b.starts_at < coalesce(c.ends_at, c.starts_at + interval 1 minute)
                    and coalesce(b.ends_at, b.starts_at + interval 1 minute) > c.starts_at
                    and (case when c.practitioner_id is not null
                              then b.practitioner_id = c.practitioner_id
                              else b.location_id is not distinct from c.location_id end))
        )
        select strftime(starts_at at time zone 'UTC', '%Y-%m-%dT%H:%M:%SZ') || '|' ||
                   coalesce(practitioner_id, '') || '|' || coalesce(location_id, '')
                   as slot_key,
               min(appointment_id) as appointment_id, starts_at,
               min(appointment_type_id) as appointment_type_id, practitioner_id, location_id,
               list(distinct patient_id) as cancelled_by
        from cancelled
        group by starts_at, practitioner_id, location_id
        order by starts_at, appointment_id
        """,
        params={"now": now},
    ).to_arrow_table()
    return pl.from_arrow(frame).cast(SLOT_SCHEMA)


def read_waitlist(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Who is waiting: waitlist entries not removed."""
    return con.sql(
        "select patient_id, appointment_type_id, practitioner_id, location_id, added_at "
        "from raw.waitlist where removed_at is null"
    ).pl().cast(WAITLIST_SCHEMA)


def match_offers(
    campaign: str,
    slots: pl.DataFrame,
    waitlist: pl.DataFrame,
    eligible: Sequence[str],
    offered: pl.DataFrame,
    per_slot: int,
) -> pl.DataFrame:
    """(campaign, patient_id, appointment_id, slot_key): each slot, earliest first,
    offered to the next `per_slot` fitting waitlist patients among `eligible` (who the
    campaign can message now), by `added_at` (then patient id), skipping who was offered
    it before (`offered`: slot_key, patient_id), who cancelled it, and who is offered an
    earlier slot in this run."""
    allowed = set(eligible)
    before = set(offered.select("slot_key", "patient_id").iter_rows())
    # Each patient's entries, earliest joined first (a patient may wait for several).
    entries = (
        waitlist.filter(pl.col("patient_id").is_in(list(allowed)))
        .sort(["added_at", "patient_id"], nulls_last=True)
        .to_dicts()
    )
    taken: set[str] = set()
    out = []
    for slot in slots.sort(["starts_at", "appointment_id"]).iter_rows(named=True):
        picked = 0
        for e in entries:
            if picked >= per_slot:
                break
            pid = e["patient_id"]
            if pid in taken or (slot["slot_key"], pid) in before or pid in (
                    slot["cancelled_by"] or ()):  # fmt: skip
                continue
            if all(e[k] is None or e[k] == slot[k]
                   for k in ("appointment_type_id", "practitioner_id", "location_id")):  # fmt: skip
                out.append((campaign, pid, slot["appointment_id"], slot["slot_key"]))
                taken.add(pid)
                picked += 1
    return pl.DataFrame(out, schema=OFFER_SCHEMA, orient="row")


def read_offered(engine: Engine) -> pl.DataFrame:
    migrate(engine, [COMPONENT])
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(offers.c.slot_key,
                                                         offers.c.patient_id))]  # fmt: skip
    return pl.DataFrame(rows, schema={"slot_key": pl.String, "patient_id": pl.String},
                        orient="row")  # fmt: skip


def claim_offers(engine: Engine, campaign: str, wanted: Sequence[tuple[str, str, str]],
                 now: datetime | None = None) -> set[tuple[str, str]]:  # fmt: skip
    """Record (slot_key, patient_id, appointment_id) offers before their messages are
    requested; returns the (slot_key, patient_id) recorded now (an offer recorded before,
    by any run, is not made again)."""
    from outbound.ledger import insert_ignoring_duplicates

    if not wanted:
        return set()
    migrate(engine, [COMPONENT])
    at = now or datetime.now(UTC)
    rows = [dict(slot_key=k, patient_id=p, appointment_id=a, campaign=campaign, offered_at=at)
            for k, p, a in wanted]  # fmt: skip
    with engine.begin() as conn:
        stmt = insert_ignoring_duplicates(conn, offers).returning(
            offers.c.slot_key, offers.c.patient_id)
        return {tuple(r) for r in conn.execute(stmt, rows).all()}


def release_offers(engine: Engine, pairs: Sequence[tuple[str, str]]) -> None:
    """Forget (slot_key, patient_id) offers whose message provably never went (the
    provider never took it): a later run may offer the slot again."""
    with engine.begin() as conn:
        for key, patient in pairs:
            conn.execute(offers.delete().where(offers.c.slot_key == key,
                                               offers.c.patient_id == patient))  # fmt: skip


def slot_details(con: duckdb.DuckDBPyConnection, matched: pl.DataFrame, timezone: str
                 ) -> pl.DataFrame:  # fmt: skip
    """(campaign, patient_id, slot_*) for the template: the slot's time on the clinic's
    clock, its type, practitioner and location by name."""
    con.register("_offers", matched.select("campaign", "patient_id", "appointment_id").to_arrow())
    try:
        frame = con.sql(
            """
            select o.campaign, o.patient_id,
                   strftime(timezone(?, a.starts_at), '%A %-d %B, %-I:%M %p')
                       as slot_starts_at,
                   coalesce(t.name, '') as slot_type,
                   coalesce(trim(coalesce(p.first_name, '') || ' ' ||
                                 coalesce(p.last_name, '')), '') as slot_practitioner,
                   coalesce(l.name, '') as slot_location
            from _offers o
            join raw.appointments a on a.appointment_id = o.appointment_id
            left join raw.appointment_types t on t.appointment_type_id = a.appointment_type_id
            left join raw.practitioners p on p.practitioner_id = a.practitioner_id
            left join raw.locations l on l.location_id = a.location_id
            """,
            params=[timezone],
        ).to_arrow_table()
    finally:
        con.unregister("_offers")
    return pl.from_arrow(frame)
