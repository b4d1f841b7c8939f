"""Campaigns paused and resumed by staff, kept in the state store (component
`campaign_pauses`): who did it and when, every time. A paused campaign is left out of
the next plan, as if its file said `enabled: false`; resuming puts it back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from core.state_store import Migration, UTCDateTime, register_migrations

COMPONENT = "campaign_pauses"
metadata = sa.MetaData()
events = sa.Table(
    "outbound_campaign_pauses",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("campaign", sa.String(200), nullable=False, index=True),
    sa.Column("paused", sa.Boolean, nullable=False),
    sa.Column("by", sa.String(320), nullable=False),
    sa.Column("at", UTCDateTime, nullable=False),
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn)


register_migrations(COMPONENT, [Migration(1, "campaign pauses with who and when", _create_v1)])


@dataclass(frozen=True)
class PauseState:
    paused: bool
    by: str
    at: datetime


def set_paused(engine: Engine, campaign: str, paused: bool, by: str,
               now: datetime | None = None) -> PauseState:  # fmt: skip
    at = now or datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(events.insert().values(campaign=campaign, paused=paused, by=by, at=at))
    return PauseState(paused, by, at)


def pause_states(engine: Engine) -> dict[str, PauseState]:
    """Each campaign's latest pause or resume."""
    if not sa.inspect(engine).has_table(events.name):
        return {}
    latest = sa.select(events.c.campaign, sa.func.max(events.c.id).label("id")).group_by(
        events.c.campaign).subquery()  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(sa.select(events).join(latest, events.c.id == latest.c.id))
        return {r.campaign: PauseState(bool(r.paused), r.by, r.at) for r in rows}
