"""A rerun on an unchanged extract reads nothing again; any change is loaded."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import duckdb
import pytest

import ingest.load as load
import ingest.unchanged as unchanged
from ingest.load import load_all

DAY = date(2026, 6, 30)


@pytest.fixture
def extract(tmp_path: Path) -> Path:
    folder = tmp_path / "extract"
    folder.mkdir()
    (folder / "patients.csv").write_text("patient_id,first_name\n1,Ann\n2,Bo\n")
    (folder / "appointments.csv").write_text(
        "appointment_id,patient_id,starts_at\na1,1,2026-06-01T09:00:00Z\n"
    )
    return folder


@pytest.fixture
def staged_entities(monkeypatch) -> list[str]:
    """The entities whose source is read (staged), in order."""
    seen: list[str] = []
    real = load.stage_entity

    def spy(con, name, *args, **kwargs):
        seen.append(name)
        return real(con, name, *args, **kwargs)

    monkeypatch.setattr(load, "stage_entity", spy)
    return seen


def run(db: Path, extract: Path, as_of: date = DAY, **kwargs) -> dict:
    con = duckdb.connect(str(db))
    try:
        return load_all(con, extract, "csv", as_of=as_of, **kwargs)
    finally:
        con.close()


def rows(db: Path, sql: str) -> list:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_rerun_on_the_same_files_reads_neither_and_keeps_the_tables(
    tmp_path, extract, staged_entities
):
    db = tmp_path / "w.duckdb"
    first = run(db, extract)
    assert {"patients", "appointments"} <= set(staged_entities)
    assert not any(r.unchanged for r in first.values())
    staged_entities.clear()
    again = run(db, extract)
    # Only the entities without a file (empty, nothing to read) are staged again.
    assert "patients" not in staged_entities and "appointments" not in staged_entities
    assert again["patients"].unchanged and again["appointments"].unchanged
    assert (again["patients"].rows_in, again["patients"].loaded) == (2, 2)
    assert rows(db, "select patient_id from raw.patients order by 1") == [("1",), ("2",)]


def test_a_changed_file_is_loaded_and_the_others_are_not(tmp_path, extract, staged_entities):
    db = tmp_path / "w.duckdb"
    run(db, extract)
    staged_entities.clear()
    (extract / "patients.csv").write_text("patient_id,first_name\n1,Ann\n2,Bo\n3,Cy\n")
    again = run(db, extract)
    assert "patients" in staged_entities and "appointments" not in staged_entities
    assert not again["patients"].unchanged and again["appointments"].unchanged
    assert rows(db, "select count(*) from raw.patients") == [(3,)]


def test_a_file_written_again_with_the_same_bytes_is_loaded_again(
    tmp_path, extract, staged_entities
):
    db = tmp_path / "w.duckdb"
    run(db, extract)
    staged_entities.clear()
    path = extract / "appointments.csv"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))
    assert not run(db, extract)["appointments"].unchanged
    assert "appointments" in staged_entities


def test_another_day_or_another_loader_loads_everything_again(
    tmp_path, extract, staged_entities, monkeypatch
):
    db = tmp_path / "w.duckdb"
    run(db, extract)
    staged_entities.clear()
    assert not run(db, extract, as_of=date(2026, 7, 1))["patients"].unchanged
    assert "patients" in staged_entities
    staged_entities.clear()
    monkeypatch.setattr(unchanged, "loader_version", lambda: "a later version of the loader")
    assert not run(db, extract, as_of=date(2026, 7, 1))["patients"].unchanged
    assert "patients" in staged_entities


def test_a_refused_load_is_not_remembered_as_loaded(tmp_path, extract, staged_entities):
    db = tmp_path / "w.duckdb"
    run(db, extract)
    (extract / "patients.csv").write_text("patient_id,first_name\n9,Zed\n")

    def refuse(con, staged):
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        run(db, extract, before_swap=refuse)
    assert rows(db, "select patient_id from raw.patients order by 1") == [("1",), ("2",)]
    staged_entities.clear()
    # The new file was never swapped in: the next run must load it, not skip it.
    assert not run(db, extract)["patients"].unchanged
    assert rows(db, "select patient_id from raw.patients") == [("9",)]


def test_a_dropped_table_is_loaded_again(tmp_path, extract, staged_entities):
    db = tmp_path / "w.duckdb"
    run(db, extract)
    con = duckdb.connect(str(db))
    con.execute("drop table raw.patients__rejected")
    con.close()
    staged_entities.clear()
    assert not run(db, extract)["patients"].unchanged
    assert rows(db, "select count(*) from raw.patients__rejected") == [(0,)]


def test_the_shrink_guard_takes_an_unchanged_source_as_counted(tmp_path, extract, monkeypatch):
    import ingest.guard as guard

    db = tmp_path / "w.duckdb"
    run(db, extract)
    counted: list[str] = []
    real = guard.extract_rows

    def spy(folder, ent, fmt):
        counted.append(ent.name)
        return real(folder, ent, fmt)

    monkeypatch.setattr(guard, "extract_rows", spy)
    (extract / "appointments.csv").write_text(
        "appointment_id,patient_id,starts_at\na1,1,2026-06-01T09:00:00Z\n"
        "a2,2,2026-06-02T09:00:00Z\n"
    )
    con = duckdb.connect(str(db))
    try:
        counts = guard.check_extract(con, extract, "csv", guard.ShrinkRule.parse(None, 0.5), DAY)
    finally:
        con.close()
    assert "patients" not in counted and "appointments" in counted
    assert (counts["patients"], counts["appointments"]) == (2, 2)
