"""One run per warehouse at a time: a second stops at once and says which run holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from clinic_audiences.cli import main
from core.run_lock import WarehouseBusy, hold_warehouse, lock_path
from core.warehouse import connect
from orchestration.ingest import EXTRACTS_TAG, build_ingest_assets
from orchestration.resources import ClinicSettingsResource, WarehouseResource

HOLD = """
import sys, time
from core.run_lock import hold_warehouse
with hold_warehouse(sys.argv[1], "a test holder"):
    print("held", flush=True)
    time.sleep(60)
"""


def write_extract(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "patients.csv").write_text("patient_id,first_name\np1,Ann\np2,Bo\n")
    (folder / "appointments.csv").write_text(
        "appointment_id,patient_id,starts_at\na1,p1,2026-11-05T09:00:00Z\n"
    )
    return folder


@pytest.fixture
def other_process_holds(tmp_path):
    """Another process holding the warehouse lock, as a running pipeline does."""
    db = tmp_path / "w.duckdb"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout.readline().strip() == "held"
    yield db, proc
    proc.kill()
    proc.wait()


def test_a_second_cli_run_stops_at_once_naming_the_first(
    other_process_holds, tmp_path, monkeypatch, capsys
):
    db, proc = other_process_holds
    monkeypatch.setenv("DUCKDB_PATH", str(db))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 's.db'}")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    extract = write_extract(tmp_path / "x")
    started = time.perf_counter()
    assert main(["run", "--extracts", str(extract), "--as-of", "2026-11-26"]) == 2
    assert time.perf_counter() - started < 30  # at once: no waiting for the other run
    err = capsys.readouterr().err
    assert f"another run (pid {proc.pid} on " in err and "a test holder)" in err
    assert f"holds the warehouse {db}; one run at a time writes it" in err
    assert not db.exists()  # nothing was written


def test_a_dagster_run_holds_the_warehouse_for_all_its_steps(other_process_holds, tmp_path):
    db, proc = other_process_holds
    result = dg.materialize(
        build_ingest_assets(),
        resources={
            "warehouse": WarehouseResource(duckdb_path=str(db)),
            "settings": ClinicSettingsResource(),
        },
        tags={EXTRACTS_TAG: str(write_extract(tmp_path / "x"))}, partition_key="2026-11-26",
        raise_on_error=False,
    )
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
    assert not db.exists()


def test_the_lock_is_free_once_the_holder_dies(other_process_holds):
    db, proc = other_process_holds
    with pytest.raises(WarehouseBusy), hold_warehouse(db, "second"):
        pass
    os.kill(proc.pid, signal.SIGKILL)  # a crash: the operating system releases the lock
    proc.wait()
    with hold_warehouse(db, "after the crash"):
        assert "after the crash" in lock_path(db).read_text()
    assert lock_path(db).read_text() == ""


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    db = tmp_path / "w.duckdb"
    extract = write_extract(tmp_path / "x")
    with hold_warehouse(db, "the CLI"):
        result = dg.materialize(
            build_ingest_assets(),
            resources={
                "warehouse": WarehouseResource(duckdb_path=str(db)),
                "settings": ClinicSettingsResource(),
            },
            tags={EXTRACTS_TAG: str(extract)}, partition_key="2026-11-26",
        )
        assert result.success


WRITER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("open", flush=True)
time.sleep(60)
"""


def test_a_reader_of_a_warehouse_open_for_writing_gets_a_clear_message(tmp_path):
    db = tmp_path / "w.duckdb"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "open"
        with pytest.raises(WarehouseBusy, match="is open for writing by"), connect(
            db, read_only=True
        ):
            pass
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.dbt
def test_two_full_runs_at_once_the_second_stops_and_the_first_is_whole(tmp_path):
    from extract.synthetic import generate_clinic

    extract_a, extract_b = tmp_path / "a", tmp_path / "b"
    generate_clinic(300, extract_a, seed=1, fmt="csv", as_of=None)
    generate_clinic(300, extract_b, seed=2, fmt="csv", as_of=None)
    env = {
        **os.environ,
        "DUCKDB_PATH": str(tmp_path / "w.duckdb"),
        "STATE_DB_URL": f"sqlite:///{tmp_path / 's.db'}",
        "OUTBOUND_SEND_DISABLED": "1",
    }
    env.pop("DAGSTER_HOME", None)
    audiences = str(Path(sys.executable).parent / "audiences")
    first = subprocess.Popen([audiences, "run", "--extracts", str(extract_a)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not lock_path(tmp_path / "w.duckdb").exists():
        time.sleep(0.05)
    while time.time() < deadline and not lock_path(tmp_path / "w.duckdb").read_text():
        time.sleep(0.05)
    second = subprocess.run([audiences, "run", "--extracts", str(extract_b)], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    out, err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    assert f"another run (pid {first.pid} on " in second.stderr
    assert first.returncode == 0, out + err
    # The first run's warehouse is its own extract's, through every stage.
    import duckdb

    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        sources = {r[0] for r in con.execute("select distinct _source_file from raw.patients")
                   .fetchall()}  # fmt: skip
    finally:
        con.close()
    assert sources == {str(extract_a / "patients.csv")}
