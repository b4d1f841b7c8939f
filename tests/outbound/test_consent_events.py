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


def test_a_campaign_pauses_itself_when_spam_reports_pass_the_limit(engine):
    from datetime import date, timedelta

    from outbound.consent_events import apply_events
    from outbound.ledger import LedgerEntry, insert_pending, set_status
    from outbound.pauses import pause_states

    now = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    rows: dict[str, list[str]] = {}
    for campaign, n in (("noisy", 500), ("quiet", 2000)):
        entries = [LedgerEntry(campaign, f"{campaign}{i}", f"{campaign}{i}", None, "s", "email")
                   for i in range(n)]  # fmt: skip
        ids = insert_pending(engine, entries, date(2026, 11, 19), "r", now - timedelta(days=1))
        set_status(engine, ids, "sent")
        rows[campaign] = ids

    def spam(campaign: str, i: int) -> dict:
        return {"sg_event_id": f"spam-{campaign}-{i}", "event": "spamreport",
                "ledger_id": rows[campaign][i], "timestamp": T}  # fmt: skip

    # By hand: 1 of 500 is 0.2%, over the 0.1% limit; 1 of 2000 is 0.05%, under it.
    applied = apply_events(engine, [spam("noisy", 0), spam("quiet", 0)], lambda a: [], now)
    assert applied.paused == ["noisy"]
    states = pause_states(engine)
    assert states["noisy"].paused and "1 spam report(s) for 500 message(s)" in states["noisy"].by
    assert "quiet" not in states
    # 2 of 2000 is exactly 0.1%: not over the limit; 3 of 2000 is.
    assert apply_events(engine, [spam("quiet", 1)], lambda a: [], now).paused == []
    assert apply_events(engine, [spam("quiet", 2)], lambda a: [], now).paused == ["quiet"]
    # Without a limit nothing pauses itself.
    applied = apply_events(engine, [spam("noisy", 3)], lambda a: [], now, complaint_rate=None)
    assert applied.paused == []
