"""The outbound tables in the state store: versioned migrations, never rebuilt."""

from __future__ import annotations

from datetime import UTC, date, datetime

import sqlalchemy as sa

from core.state_store import _REGISTRY, connect_state, migrate, schema_migrations
from outbound import ledger as L


def test_migrations_are_recorded_and_applied_once(state_url):
    engine = connect_state(state_url)
    applied = migrate(engine)
    assert [a for a in applied if a[0] == "outbound"] == [("outbound", v) for v in range(1, 9)]
    assert [a for a in migrate(engine) if a[0] == "outbound"] == []
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema_migrations.c.version, schema_migrations.c.description)
            .where(schema_migrations.c.component == "outbound")
            .order_by(schema_migrations.c.version)
        ).all()
    assert [tuple(r) for r in rows] == [
        (1, "send ledger"),
        (2, "opt-outs learned from replies and unsubscribes"),
        (3, "ledger: time of the latest request, attempts, retryable failures"),
        (4, "one send run at a time"),
        (5, "ledger: the provider's delivery status"),
        (6, "opt-outs of unsubscribe categories"),
        (7, "opt-ins of channels that need one (WhatsApp)"),
        (8, "ledger: the address each message went to"),
    ]
    engine.dispose()


def test_upgrade_from_version_1_keeps_the_ledger(state_url, monkeypatch):
    engine = connect_state(state_url)
    full = list(_REGISTRY["outbound"])
    # A database that has only seen version 1 (as an older release would have left it),
    # holding one message written by that release.
    monkeypatch.setitem(_REGISTRY, "outbound", full[:1])
    migrate(engine, ["outbound"])
    sent_at = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            L._ledger_v1(sa.MetaData()).insert().values(
                id="m1", campaign="c", recipient="p1", patient_id="p1", case_id=None,
                segment_slug="seg", channel="email", send_date=date(2026, 1, 5), status="sent",
                error=None, provider_message_id="x", run_id="r1", created_at=sent_at,
                updated_at=sent_at,
            )
        )  # fmt: skip
    monkeypatch.setitem(_REGISTRY, "outbound", full)
    assert migrate(engine, ["outbound"]) == [("outbound", v) for v in range(2, 9)]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(L.ledger.c.id, L.ledger.c.status, L.ledger.c.attempts, L.ledger.c.retryable,
                      L.ledger.c.provider_status)
        ).one()
    # Nothing is known of its delivery beyond "sent".
    assert tuple(row) == ("m1", "sent", 1, False, None)
    # The message counts toward the cap by when it was sent (its creation time).
    history = L.read_history(engine, since=datetime(2026, 1, 1, tzinfo=UTC))
    assert history.select("recipient", "attempted_at").rows() == [("p1", sent_at)]
    L.record_opt_out(engine, "p1", "email", "reply")
    assert L.read_learned_opt_outs(engine).rows() == [("p1", "email")]
    engine.dispose()


def test_the_same_message_cannot_be_written_twice(engine):
    entry = L.LedgerEntry("c", "p1", "p1", None, "seg", "email")
    [first] = L.insert_pending(engine, [entry], date(2026, 1, 5), "r1")
    assert first is not None
    # Another run writing the same message gets no row of its own: it must not send it.
    assert L.insert_pending(engine, [entry], date(2026, 1, 5), "r2") == [None]
    with engine.connect() as conn:
        assert conn.execute(sa.select(L.ledger.c.run_id)).scalars().all() == ["r1"]
    # Another day is another message.
    assert L.insert_pending(engine, [entry], date(2026, 1, 6), "r2")[0] is not None


def test_pending_rows_of_other_runs_become_unknown(engine):
    day = date(2026, 1, 5)
    a = L.insert_pending(engine, [L.LedgerEntry("c", "p1", "p1", None, "s", "email")], day, "old")
    b = L.insert_pending(engine, [L.LedgerEntry("c", "p2", "p2", None, "s", "email")], day, "new")
    sent = L.insert_pending(
        engine, [L.LedgerEntry("c", "p3", "p3", None, "s", "email")], day, "old"
    )
    L.set_status(engine, sent, L.SENT)
    assert L.mark_abandoned_unknown(engine, "new") == 1
    got = L.existing_keys(engine, day)
    assert got == {("c", "p1"): "unknown", ("c", "p2"): "pending", ("c", "p3"): "sent"}
    assert a and b
