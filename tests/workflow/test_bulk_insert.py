"""The bulk insert of a large sync writes exactly what the ordinary insert writes, on
SQLite and on PostgreSQL: the same values read back, time zones normalised to UTC, nulls
kept, and a row that breaks a constraint refusing the whole batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.state_store import insert_many
from workflow.store import events, members

SYDNEY = timezone(timedelta(hours=11))


def member(n: int, at: datetime, **extra: object) -> dict[str, object]:
    return {"worklist_slug": "wl", "member_id": f"m{n}", "patient_id": f"p{n}",
            "case_id": None if n % 2 else f"c{n}", "stage": "To call",
            "assignee": None if n % 3 else "sam@clinic.example", "entered_at": at,
            "stage_since": at, "left_segment": bool(n % 5 == 0), "version": 1, **extra}  # fmt: skip


def read(engine: Engine, slug: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(members).where(members.c.worklist_slug == slug)
            .order_by(members.c.member_id))]  # fmt: skip


def test_bulk_rows_read_back_as_the_ordinary_insert_writes_them(engine: Engine) -> None:
    utc = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    # The same instants given in three zones; the 9th row is due a date, one row per kind.
    given = [utc, utc.astimezone(SYDNEY), utc + timedelta(microseconds=7)]
    rows = [member(n, given[n % 3]) for n in range(30)]
    with engine.begin() as conn:
        assert insert_many(conn, members, rows) == 30
        conn.execute(members.insert(), [{**r, "worklist_slug": "ordinary"} for r in rows])
    bulk, ordinary = read(engine, "wl"), read(engine, "ordinary")
    assert [r[1:] for r in bulk] == [r[1:] for r in ordinary]
    entered = {r[1]: r[7] for r in bulk}
    assert entered["m0"] == entered["m1"] == utc and entered["m1"].tzinfo is not None
    assert entered["m2"] == utc + timedelta(microseconds=7)
    assert {r[1]: r[11] for r in bulk}["m5"] is True


def test_events_get_their_ids_and_a_repeated_change_refuses_the_batch(engine: Engine) -> None:
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    row = {"worklist_slug": "wl", "member_id": "m1", "member_version": 1, "at": at,
           "actor": "system", "kind": "entered", "from_stage": None, "to_stage": "To call",
           "assignee": None, "note": None}  # fmt: skip
    with engine.begin() as conn:
        insert_many(conn, events, [row, {**row, "member_id": "m2"}])
    with engine.connect() as conn:
        ids = conn.execute(sa.select(events.c.event_id).order_by(events.c.event_id)).scalars()
        assert len(set(ids)) == 2
    # (worklist, member, version) is unique: the whole batch is refused, nothing written.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        insert_many(conn, events, [{**row, "member_id": "m3"}, row])
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar() == 2
    with engine.begin() as conn:
        assert insert_many(conn, events, []) == 0


def test_a_timestamp_without_a_zone_is_refused_as_by_the_ordinary_insert(engine: Engine) -> None:
    naive = datetime(2026, 3, 2, 9, 0)
    with pytest.raises((ValueError, sa.exc.StatementError)), engine.begin() as conn:
        insert_many(conn, members, [member(1, naive)])


def test_the_repeated_hour_of_a_clock_change_and_left_out_defaults(engine: Engine) -> None:
    from zoneinfo import ZoneInfo

    sydney = ZoneInfo("Australia/Sydney")
    # 2026-04-05 02:30 happens twice in Sydney: at 15:30 UTC (daylight time) and 16:30 UTC.
    first = datetime(2026, 4, 5, 2, 30, tzinfo=sydney, fold=0)
    second = datetime(2026, 4, 5, 2, 30, tzinfo=sydney, fold=1)
    rows = [member(1, first), member(2, second)]
    for row in rows:
        del row["left_segment"]  # its default (false) applies, as with the ordinary insert
    with engine.begin() as conn:
        insert_many(conn, members, rows)
    stored = {r[1]: (r[7], r[11]) for r in read(engine, "wl")}
    assert stored["m1"] == (datetime(2026, 4, 4, 15, 30, tzinfo=UTC), False)
    assert stored["m2"] == (datetime(2026, 4, 4, 16, 30, tzinfo=UTC), False)
