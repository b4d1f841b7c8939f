"""Consent and delivery learned from Twilio: inbound replies and status callbacks.

Inbound messages (docs/consent.md):
- STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPT OUT (the whole message, any
  case) opt the number out of SMS: every patient record with that number gets a learned
  SMS opt-out, and the number itself is refused whoever has it later;
- START, UNSTOP, YES lift what a STOP (or Twilio's error 21610) set, and nothing else (an
  opt-out from the practice-management system stays);
- HELP (or INFO) is answered with who the clinic is and how to stop.
Each message is applied once, by its MessageSid (Twilio retries a webhook it could not
deliver). Status callbacks move a ledger row's provider status only forward, whatever
order they arrive in; a status with error 21610 is learned as an opt-out too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, UTCDateTime, migrate, register_migrations
from outbound.ledger import (
    advance_provider_status,
    insert_ignoring_duplicates,
    learned_opt_outs,
    record_opt_ins,
)

COMPONENT = "twilio_events"

STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPT OUT", "OPTOUT"}
)
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_WORDS = frozenset({"HELP", "INFO"})
# Sources of the SMS opt-outs a START lifts.
STOP_SOURCE = "twilio STOP reply"
UNSUBSCRIBED_SOURCE = "twilio error 21610 (the number replied STOP)"

meta = sa.MetaData()
seen = sa.Table(
    "twilio_messages_seen",
    meta,
    sa.Column("message_sid", sa.String(64), primary_key=True),
    # stop / start / help / other
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
)
# Addresses refused whoever has them: a number that replied STOP stays refused when a new
# patient record, or a changed one, carries it.
refused_addresses = sa.Table(
    "outbound_refused_addresses",
    meta,
    # sms:+61412345678, as the plan keys addresses.
    sa.Column("address_key", sa.String(200), primary_key=True),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
)


def _create(conn: Connection) -> None:
    meta.create_all(conn)


register_migrations(
    COMPONENT,
    [Migration(1, "Twilio replies already applied; addresses refused whoever has them", _create)],
)


def keyword(body: str) -> str:
    """stop / start / help / other, for a whole message as a patient typed it: any case,
    fullwidth letters, quotes, punctuation, emoji and invisible marks aside."""
    import unicodedata

    text = unicodedata.normalize("NFKC", body)
    text = re.sub(r"[\u200b-\u200d\u2060\ufeff]", "", text)
    word = " ".join(re.sub(r"[^\w\s]|[\d_]", " ", text).split()).upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return "other"


@dataclass(frozen=True)
class Inbound:
    kind: str  # stop / start / help / other
    duplicate: bool = False
    channel: str = "sms"
    patients: int = 0


def read_refused_addresses(engine: Engine) -> pl.DataFrame:
    migrate(engine, [COMPONENT])
    with engine.connect() as conn:
        keys = [r.address_key for r in conn.execute(sa.select(refused_addresses.c.address_key))]
    return pl.DataFrame({"recipient_key": keys}, schema={"recipient_key": pl.String})


def refuse_number(conn: Connection, number: str | None, patients: list[str], source: str,
                  at: datetime, channel: str = "sms") -> None:  # fmt: skip
    """The number (E.164; None: not known), and these patient records, opted out of the
    channel (SMS, or WhatsApp: each has its own consent)."""
    if number:
        row = dict(address_key=f"{channel}:{number}", recorded_at=at, source=source)
        conn.execute(insert_ignoring_duplicates(conn, refused_addresses), [row])
    if patients:
        rows = [dict(patient_id=p, channel=channel, recorded_at=at, source=source)
                for p in patients]  # fmt: skip
        conn.execute(insert_ignoring_duplicates(conn, learned_opt_outs), rows)


def _lift_number(conn: Connection, number: str, patients: list[str], channel: str) -> None:
    conn.execute(refused_addresses.delete().where(
        refused_addresses.c.address_key == f"{channel}:{number}",
        refused_addresses.c.source.in_([STOP_SOURCE, UNSUBSCRIBED_SOURCE])))  # fmt: skip
    if patients:
        conn.execute(learned_opt_outs.delete().where(
            learned_opt_outs.c.patient_id.in_(patients),
            learned_opt_outs.c.channel == channel,
            learned_opt_outs.c.source.in_([STOP_SOURCE, UNSUBSCRIBED_SOURCE])))  # fmt: skip


def apply_inbound(
    engine: Engine,
    form: Mapping[str, str],
    patients_with_number: Callable[[str], list[str]],
    normalise: Callable[[str], str | None],
    now: datetime | None = None,
) -> Inbound:
    """Apply one verified inbound message (Twilio's form fields). `normalise` turns the
    sender into E.164; `patients_with_number` names the patient records with a number."""
    migrate(engine, [COMPONENT])
    now = now or datetime.now(UTC)
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()[:64]
    kind = keyword(form.get("Body") or "")
    sender = (form.get("From") or "").strip()
    # A WhatsApp message comes from `whatsapp:+61...`: WhatsApp has its own consent.
    channel = "whatsapp" if sender.lower().startswith("whatsapp:") else "sms"
    number = normalise(sender.split(":", 1)[1] if channel == "whatsapp" else sender)
    if not sid:
        raise ValueError("an inbound message without a MessageSid")
    with engine.begin() as conn:
        stmt = insert_ignoring_duplicates(conn, seen).returning(seen.c.message_sid)
        first = conn.execute(stmt, [dict(message_sid=sid, kind=kind, received_at=now)]).all()
        if not first:
            return Inbound(kind, duplicate=True)
        if number is None or kind not in ("stop", "start"):
            return Inbound(kind)
        patients = sorted(set(patients_with_number(number)))
        if kind == "stop":
            refuse_number(conn, number, patients, STOP_SOURCE, now, channel)
        else:
            _lift_number(conn, number, patients, channel)
            if channel == "whatsapp":
                # The patient's own yes to WhatsApp messages: the opt-in it needs.
                record_opt_ins(conn, patients, "whatsapp", "WhatsApp START reply", now)
        return Inbound(kind, channel=channel, patients=len(patients))


def apply_status(engine: Engine, form: Mapping[str, str], now: datetime | None = None) -> bool:
    """Apply one verified status callback; True when it moved a ledger row forward."""
    migrate(engine, [COMPONENT])
    now = now or datetime.now(UTC)
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    code = (form.get("ErrorCode") or "").strip() or None
    moved = advance_provider_status(engine, sid, status, code, now)
    if moved is not None and code == "21610" and moved[0]:
        patient, channel = moved
        number = (form.get("To") or "").strip()
        # A WhatsApp message goes to `whatsapp:+61...`: the opt-out is WhatsApp's.
        number = number.split(":", 1)[1] if number.lower().startswith("whatsapp:") else number
        with engine.begin() as conn:
            refuse_number(conn, number if re.fullmatch(r"\+[1-9][0-9]{7,14}", number) else None,
                          [patient], UNSUBSCRIBED_SOURCE, now,
                          channel if channel in ("sms", "whatsapp") else "sms")  # fmt: skip
    return moved is not None
