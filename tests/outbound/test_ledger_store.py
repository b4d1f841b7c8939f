"""The outbound tables in the state store: versioned migrations, never rebuilt."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from outbound import ledger as L
from state import connect_state, migrate
from state.store import _REGISTRY, schema_migrations


def test_migrations_are_recorded_and_applied_once(state_url):
    engine = connect_state(state_url)
    applied = migrate(engine)
    assert ("outbound", 1) in applied and ("outbound", 2) in applied
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
    ]
    engine.dispose()


def test_upgrade_from_version_1_keeps_the_ledger(state_url, monkeypatch):
    engine = connect_state(state_url)
    full = list(_REGISTRY["outbound"])
    # A database that has only seen version 1 (as an older release would have left it).
    monkeypatch.setitem(_REGISTRY, "outbound", full[:1])
    migrate(engine, ["outbound"])
    ids = L.insert_pending(
        engine, [L.LedgerEntry("c", "p1", "p1", None, "seg", "email")], date(2026, 1, 5), "r1"
    )
    monkeypatch.setitem(_REGISTRY, "outbound", full)
    assert migrate(engine, ["outbound"]) == [("outbound", 2)]
    with engine.connect() as conn:
        assert conn.execute(sa.select(L.ledger.c.id)).scalars().all() == ids
    L.record_opt_out(engine, "p1", "email", "reply")
    assert L.read_learned_opt_outs(engine).rows() == [("p1", "email")]
    engine.dispose()


def test_the_same_message_cannot_be_written_twice(engine):
    entry = L.LedgerEntry("c", "p1", "p1", None, "seg", "email")
    L.insert_pending(engine, [entry], date(2026, 1, 5), "r1")
    with pytest.raises(sa.exc.IntegrityError):
        L.insert_pending(engine, [entry], date(2026, 1, 5), "r2")
    # Another day is another message.
    L.insert_pending(engine, [entry], date(2026, 1, 6), "r2")


def test_pending_rows_of_other_runs_become_unknown(engine):
    day = date(2026, 1, 5)
    a = L.insert_pending(engine, [L.LedgerEntry("c", "p1", "p1", None, "s", "email")], day, "old")
    b = L.insert_pending(engine, [L.LedgerEntry("c", "p2", "p2", None, "s", "email")], day, "new")
    sent = L.insert_pending(
        engine, [L.LedgerEntry("c", "p3", "p3", None, "s", "email")], day, "old"
    )
    L.set_status(engine, sent, L.SENT)
    assert L.mark_abandoned_unknown(engine, day, "new") == 1
    got = L.existing_keys(engine, day)
    assert got == {("c", "p1"): "unknown", ("c", "p2"): "pending", ("c", "p3"): "sent"}
    assert a and b
