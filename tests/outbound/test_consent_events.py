"""SendGrid events applied to the state store, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

T = int(datetime(2026, 11, 20, 9, tzinfo=UTC).timestamp())


def kept(engine) -> dict[str, str]:
    from outbound.ledger import learned_opt_outs

    with engine.connect() as conn:
        return {r.patient_id: r.source for r in conn.execute(sa.select(learned_opt_outs))}


def test_events_become_opt_outs_once_and_a_resubscribe_lifts_only_its_own(engine):
    from outbound.consent_events import apply_events

    book = {"a@x.example": ["pa"], "b@x.example": ["pb1", "pb2"], "c@x.example": ["pc"]}

    def who(address: str) -> list[str]:
        return book.get(address, [])

    events = [
        {"sg_event_id": "1", "event": "spamreport", "email": "a@x.example", "timestamp": T},
        # One address, two patient records: both stop getting email.
        {"sg_event_id": "2", "event": "group_unsubscribe", "email": "B@x.example ",
         "timestamp": T + 1},
        {"sg_event_id": "3", "event": "delivered", "email": "c@x.example", "timestamp": T},
        {"sg_event_id": "4", "event": "bounce", "email": "nobody@x.example", "timestamp": T},
        {"event": "bounce", "email": "c@x.example"},  # no event id: not applied
    ]  # fmt: skip
    applied = apply_events(engine, events, who)
    assert (applied.suppressed, applied.unmatched, applied.ignored) == (3, 1, 2)
    assert kept(engine) == {"pa": "sendgrid spamreport: reported as spam",
                            "pb1": "sendgrid group_unsubscribe: unsubscribed from a group",
                            "pb2": "sendgrid group_unsubscribe: unsubscribed from a group"}
    assert apply_events(engine, events, who).duplicates == 3  # the ones with ids that mean consent
    lift = [{"sg_event_id": "5", "event": "group_resubscribe", "email": "b@x.example",
             "timestamp": T + 2},
            {"sg_event_id": "6", "event": "group_resubscribe", "email": "a@x.example",
             "timestamp": T + 2}]  # fmt: skip
    assert apply_events(engine, lift, who).resubscribed == 2  # pb1, pb2; pa's report stays
    assert kept(engine) == {"pa": "sendgrid spamreport: reported as spam"}
