"""Membership and its history over several runs, snapshot freezing, and the tables'
survival when the marts are rebuilt."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest

from core.settings import Settings
from segments.evaluate import WarehouseFrames
from segments.field_catalogue import Catalogue
from segments.library import materialise, resnapshot, state_engine
from segments.members import check_consistency
from segments.snapshots import load_snapshot
from segments.validation import load_segment

ACTIVE = "name: Active\nmode: {mode}\ninclude:\n  conditions:\n    - {{field: status, op: eq, value: active}}\n"  # noqa: E501


def patients(**status: str) -> dict:
    return {"patient_features": [dict(patient_id=p, status=s) for p, s in status.items()]}


@pytest.fixture
def setup(tmp_path: Path, catalogue: Catalogue, make_warehouse):
    db = tmp_path / "warehouse.duckdb"
    engine = state_engine(f"sqlite:///{tmp_path / 'state.db'}")
    folder = tmp_path / "segs"
    folder.mkdir()

    def run(slug: str, mode: str, rows: dict, as_of: date, again: bool = False):
        # Rebuilding the marts replaces them, as a dbt run does; the segments schema stays.
        make_warehouse(db, rows)
        path = folder / f"{slug}.yaml"
        path.write_text(ACTIVE.format(mode=mode))
        seg = load_segment(path, catalogue)
        return materialise(
            seg, WarehouseFrames(db), catalogue, db, engine, as_of, "UTC", resnapshot=again
        )

    return run, db, engine, folder


def history(db: Path, slug: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "select patient_id, entered_on, exited_on from segments.membership_history "
            "where segment_slug = ? order by patient_id, entered_on",
            [slug],
        ).fetchall()
    finally:
        con.close()


def membership(db: Path, slug: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(
            "select patient_id, case_id, as_of, entered_at from segments.membership "
            "where segment_slug = ? order by patient_id",
            [slug],
        ).fetchall()
    finally:
        con.close()


def test_history_over_four_runs(setup) -> None:
    run, db, _, _ = setup
    d1, d2, d3, d4 = (date(2024, 9, d) for d in (1, 2, 3, 4))
    # Run 1: A and B active -> both enter.
    r = run("active", "dynamic", patients(A="active", B="active", C="inactive"), d1).change
    assert (r.members, r.entered, r.exited, r.previous_as_of) == (2, 2, 0, None)
    # Run 2: C becomes active -> C enters, A and B stay.
    r = run("active", "dynamic", patients(A="active", B="active", C="active"), d2).change
    assert (r.members, r.entered, r.exited, r.previous_as_of) == (3, 1, 0, d1)
    # Run 3: A lapses -> A exits.
    r = run("active", "dynamic", patients(A="inactive", B="active", C="active"), d3).change
    assert (r.members, r.entered, r.exited) == (2, 0, 1)
    # Run 4: A is back -> a second interval for A.
    r = run("active", "dynamic", patients(A="active", B="active", C="active"), d4).change
    assert (r.members, r.entered, r.exited) == (3, 1, 0)

    assert history(db, "active") == [
        ("A", d1, d3),  # entered on run 1, gone on run 3
        ("A", d4, None),  # re-entered on run 4: a new interval
        ("B", d1, None),
        ("C", d2, None),
    ]
    # entered_at is the start of the current continuous membership.
    assert membership(db, "active") == [
        ("A", None, d4, d4),
        ("B", None, d4, d1),
        ("C", None, d4, d2),
    ]

    # Running the same day again changes nothing.
    r = run("active", "dynamic", patients(A="active", B="active", C="active"), d4).change
    assert (r.members, r.entered, r.exited) == (3, 0, 0)
    assert len(history(db, "active")) == 4


def test_everyone_leaves_then_segment_is_empty(setup) -> None:
    run, db, _, _ = setup
    run("active", "dynamic", patients(A="active"), date(2024, 9, 1))
    r = run("active", "dynamic", patients(A="inactive"), date(2024, 9, 2)).change
    assert (r.members, r.entered, r.exited) == (0, 0, 1)
    assert membership(db, "active") == []
    assert history(db, "active") == [("A", date(2024, 9, 1), date(2024, 9, 2))]
    # The empty run is still on record, and the next run knows when the last one was.
    r = run("active", "dynamic", patients(A="inactive"), date(2024, 9, 3)).change
    assert (r.members, r.previous_as_of) == (0, date(2024, 9, 2))
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute(
            "select as_of, members, entered, exited from segments.segment_runs "
            "where segment_slug = 'active' order by as_of"
        ).fetchall()
    finally:
        con.close()
    assert runs == [
        (date(2024, 9, 1), 1, 1, 0),
        (date(2024, 9, 2), 0, 0, 1),
        (date(2024, 9, 3), 0, 0, 0),
    ]


def test_snapshot_freezes_until_resnapshotted(setup) -> None:
    run, db, engine, _ = setup
    first = run("frozen", "snapshot", patients(A="active", B="inactive"), date(2024, 9, 1))
    assert first.snapshotted and first.members["patient_id"].to_list() == ["A"]
    # The marts change, but a snapshot segment keeps its list.
    later = run("frozen", "snapshot", patients(A="inactive", B="active"), date(2024, 9, 2))
    assert not later.snapshotted
    assert later.members["patient_id"].to_list() == ["A"]
    assert (later.change.entered, later.change.exited) == (0, 0)
    assert [m[0] for m in membership(db, "frozen")] == ["A"]
    # Re-snapshotting on purpose takes the current members.
    again = run("frozen", "snapshot", patients(A="inactive", B="active"), date(2024, 9, 3), True)
    assert again.snapshotted
    assert [m[0] for m in membership(db, "frozen")] == ["B"]
    assert load_snapshot(engine, "frozen")["patient_id"].to_list() == ["B"]


def test_empty_snapshot_stays_empty(setup) -> None:
    run, db, engine, _ = setup
    run("frozen", "snapshot", patients(A="inactive"), date(2024, 9, 1))
    snap = load_snapshot(engine, "frozen")
    assert snap is not None and snap.height == 0
    later = run("frozen", "snapshot", patients(A="active"), date(2024, 9, 2))
    assert later.members.height == 0


def test_resnapshot_function(setup, tmp_path: Path, monkeypatch) -> None:
    run, db, engine, folder = setup
    run("frozen", "snapshot", patients(A="active", B="inactive"), date(2024, 9, 1))
    # The marts change; resnapshot re-evaluates from the warehouse and replaces the list.
    run("other", "dynamic", patients(A="inactive", B="active"), date(2024, 9, 2))
    settings = Settings(
        duckdb_path=db,
        state_db_url=f"sqlite:///{tmp_path / 'state.db'}",
        clinic_timezone="UTC",
        extracts_root=tmp_path,
        segments_path=folder,
    )
    assert resnapshot("frozen", "2024-09-02", settings) == 1
    assert load_snapshot(engine, "frozen")["patient_id"].to_list() == ["B"]
    with pytest.raises(ValueError, match="dynamic"):
        resnapshot("other", "2024-09-02", settings)
    with pytest.raises(KeyError, match="no segment"):
        resnapshot("nope", "2024-09-02", settings)


def test_consistency_check_notices_broken_history(setup) -> None:
    run, db, _, _ = setup
    first = run("active", "dynamic", patients(A="active", B="active"), date(2024, 9, 1))
    assert first.consistency.ok
    con = duckdb.connect(str(db))
    try:
        # Lose A's open interval and invent one for C, who is not a member.
        con.execute("delete from segments.membership_history where patient_id = 'A'")
        con.execute(
            "insert into segments.membership_history values ('active', 'C', null, ?, null)",
            [date(2024, 9, 1)],
        )
        c = check_consistency(con, "active")
    finally:
        con.close()
    assert (c.duplicate_members, c.members_without_open_interval) == (0, 1)
    assert c.open_intervals_of_non_members == 1
    assert not c.ok


def test_an_evaluation_record_holds_only_for_the_membership_it_was_made_with():
    from datetime import timedelta

    import polars as pl

    from segments.members import evaluated_from, record_membership, remember_inputs

    D = date(2024, 8, 31)  # noqa: N806
    members = pl.DataFrame({"patient_id": ["P1", "P2"], "case_id": [None, None]},
                           schema={"patient_id": pl.String, "case_id": pl.String})  # fmt: skip
    con = duckdb.connect()
    record_membership(con, "s", members, D)
    assert evaluated_from(con, "s", D) is None
    remember_inputs(con, "s", D, "inputs-1")
    assert evaluated_from(con, "s", D) == "inputs-1"
    assert evaluated_from(con, "other", D) is None
    # Recorded again (even with the same members): the record is dropped.
    record_membership(con, "s", members, D)
    assert evaluated_from(con, "s", D) is None
    # A record of the latest day only: once a later day is recorded, the earlier does not hold.
    remember_inputs(con, "s", D, "inputs-2")
    record_membership(con, "s", members, D + timedelta(days=1))
    remember_inputs(con, "s", D + timedelta(days=1), "inputs-3")
    assert evaluated_from(con, "s", D) is None
    assert evaluated_from(con, "s", D + timedelta(days=1)) == "inputs-3"
