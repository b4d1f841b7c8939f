"""A bad night does not wipe the clinic's work: shrunken extracts are refused before
anything is replaced, and accepted only on purpose."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from clinic_audiences.cli import main
from orchestration import ingest as ingest_stage
from orchestration.ingest import ACCEPT_SHRINK_TAG, EXTRACTS_TAG, build_ingest_assets
from orchestration.resources import ClinicSettingsResource, WarehouseResource


def write_extract(folder: Path, patients: int, appointments: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "patients.csv").write_text(
        "patient_id,first_name\n" + "".join(f"p{i},Pat{i}\n" for i in range(patients))
    )
    appointments = patients if appointments is None else appointments
    (folder / "appointments.csv").write_text(
        "appointment_id,patient_id,starts_at\n"
        + "".join(f"a{i},p{i % max(patients, 1)},2026-11-0{1 + i % 9}T09:00:00Z\n"
                  for i in range(appointments))
    )  # fmt: skip
    return folder


def run(tmp_path: Path, extract: Path, day: str, **tags: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        build_ingest_assets(),
        resources={
            "warehouse": WarehouseResource(duckdb_path=str(tmp_path / "w.duckdb")),
            "settings": ClinicSettingsResource(),
        },
        tags={EXTRACTS_TAG: str(extract), **tags}, partition_key=day,
        raise_on_error=False,
    )


def failure(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.step_key, event.step_failure_data.user_failure_data.description


def rows(tmp_path: Path, table: str) -> int:
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        return con.execute(f"select count(*) from {table}").fetchall()[0][0]
    finally:
        con.close()


def test_a_failed_export_is_refused_before_any_table_is_replaced(tmp_path):
    assert run(tmp_path, write_extract(tmp_path / "d1", 10), "2026-11-30").success
    # The PMS export failed overnight: the files are there, with a header and no rows.
    bad = write_extract(tmp_path / "d2", 0)
    result = run(tmp_path, bad, "2026-12-01")
    assert not result.success
    step, message = failure(result)
    assert step == "ingest_extract"
    assert "looks like a failed export" in message and "nothing was replaced" in message
    assert "patients: no rows, and patients is required" in message
    assert "appointments: no rows, and appointments is required" in message
    assert "--accept-shrink patients,appointments" in message
    # No entity was loaded: yesterday's rows are all still there.
    assert not result.get_asset_materialization_events()
    assert rows(tmp_path, "raw.patients") == 10 and rows(tmp_path, "raw.appointments") == 10


def test_more_than_half_fewer_rows_is_refused_and_exactly_half_is_accepted(tmp_path):
    assert run(tmp_path, write_extract(tmp_path / "d1", 10), "2026-11-29").success
    result = run(tmp_path, write_extract(tmp_path / "d2", 4), "2026-11-30")
    assert not result.success
    _, message = failure(result)
    assert "patients: 4 rows, 60% fewer than the 10 of the last accepted load of 2026-11-29" in (
        message
    )
    assert rows(tmp_path, "raw.patients") == 10
    # 5 of 10 is 50% fewer, not more: accepted.
    assert run(tmp_path, write_extract(tmp_path / "d3", 5), "2026-12-01").success
    assert rows(tmp_path, "raw.patients") == 5


def test_an_accepted_shrink_loads_and_becomes_the_new_baseline(tmp_path):
    assert run(tmp_path, write_extract(tmp_path / "d1", 10), "2026-11-28").success
    small = write_extract(tmp_path / "d2", 2)
    result = run(tmp_path, small, "2026-11-29", **{ACCEPT_SHRINK_TAG: "patients,appointments"})
    assert result.success
    assert rows(tmp_path, "raw.patients") == 2
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        assert con.execute(
            "select entity, as_of::varchar, loaded, accepted_shrink from ingest.loads "
            "where entity = 'patients' order by loaded_at"
        ).fetchall() == [("patients", "2026-11-28", 10, False), ("patients", "2026-11-29", 2, True)]
    finally:
        con.close()
    # The next day is compared with the accepted 2, not with the 10 before it.
    assert run(tmp_path, write_extract(tmp_path / "d3", 2), "2026-11-30").success


def test_a_first_load_with_no_patients_is_refused(tmp_path):
    result = run(tmp_path, write_extract(tmp_path / "d1", 0), "2026-12-01")
    assert not result.success
    assert "patients: no rows, and patients is required" in failure(result)[1]


def test_rows_all_rejected_count_as_a_shrink_inside_the_swap(tmp_path):
    assert run(tmp_path, write_extract(tmp_path / "d1", 10), "2026-11-30").success
    # Ten lines, as before, but an export that changed its date format: all rejected.
    bad = write_extract(tmp_path / "d2", 10)
    (bad / "appointments.csv").write_text(
        "appointment_id,patient_id,starts_at\n"
        + "".join(f"a{i},p{i},05/11/2026 09:00\n" for i in range(10))
    )
    result = run(tmp_path, bad, "2026-12-01")
    assert not result.success
    step, message = failure(result)
    assert step == "ingest_extract"
    assert "appointments: no rows loaded, and appointments is required" in message
    # Nothing at all was replaced: not the appointments, and not the patients either,
    # whose file was fine.
    assert rows(tmp_path, "raw.appointments") == 10
    assert rows(tmp_path, "raw.appointments__rejected") == 0
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        sources = {r[0] for r in con.execute("select _source_file from raw.patients").fetchall()}
        baselines = con.execute("select count(*) from ingest.loads").fetchall()[0][0]
    finally:
        con.close()
    assert sources == {str(tmp_path / "d1" / "patients.csv")}
    assert baselines == 12  # only the first day's twelve entities


def test_a_count_that_disagrees_with_the_loader_keeps_the_previous_tables(tmp_path, monkeypatch):
    assert run(tmp_path, write_extract(tmp_path / "d1", 10), "2026-11-30").success
    real = ingest_stage.count_input_rows
    # As if the loader had lost a row: the independent count finds one more.
    monkeypatch.setattr(
        ingest_stage,
        "count_input_rows",
        lambda folder, ent, fmt: real(folder, ent, fmt) + (ent.name == "patients"),
    )
    result = run(tmp_path, write_extract(tmp_path / "d2", 12), "2026-12-01")
    assert not result.success
    step, message = failure(result)
    assert step == "ingest_extract"
    assert "patients: ingest read 12 records (12 loaded, 0 rejected) but an independent count" in (
        message
    )
    assert "finds 13; nothing was replaced" in message
    assert rows(tmp_path, "raw.patients") == 10 and rows(tmp_path, "raw.appointments") == 10


def test_a_count_that_fails_refuses_the_extract_and_says_which(tmp_path, monkeypatch):
    # The count runs beside the loader; its failure (here: the file is unreadable to it)
    # must still stop the swap, and say what failed.
    assert run(tmp_path, write_extract(tmp_path / "d1", 10), "2026-11-30").success
    real = ingest_stage.count_input_rows

    def count(folder, ent, fmt):
        if ent.name == "appointments":
            raise PermissionError(13, "Permission denied", str(folder / "appointments.csv"))
        return real(folder, ent, fmt)

    monkeypatch.setattr(ingest_stage, "count_input_rows", count)
    result = run(tmp_path, write_extract(tmp_path / "d2", 12), "2026-12-01")
    assert not result.success
    step, message = failure(result)
    assert step == "ingest_extract"
    assert "appointments: the independent count of its source" in message
    assert "PermissionError" in message and "nothing was replaced" in message
    assert rows(tmp_path, "raw.patients") == 10 and rows(tmp_path, "raw.appointments") == 10


def test_a_value_over_128_kib_passes_the_independent_count(tmp_path):
    extract = write_extract(tmp_path / "d1", 3)
    big = "y" * 200_000
    (extract / "patients.csv").write_text(f'patient_id,address\np1,"{big}"\np2,x\np3,z\n')
    result = run(tmp_path, extract, "2026-12-01")
    assert result.success
    [check] = [
        e for e in result.get_asset_check_evaluations() if e.asset_key.path[-1] == "patients"
    ]
    assert check.metadata["rows_loaded"].value == 3
    assert check.passed and check.metadata["rows_in"].value == 3


def test_cli_accept_shrink_is_checked_and_passed_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    day1 = write_extract(tmp_path / "d1", 10)
    assert main(["run", "--extracts", str(day1), "--as-of", "2026-11-30", "--select", "raw"]) == 0
    day2 = write_extract(tmp_path / "d2", 1)
    capsys.readouterr()
    args = ["run", "--extracts", str(day2), "--as-of", "2026-12-01", "--select", "raw"]
    assert main(args) == 1
    assert "--accept-shrink patients,appointments" in capsys.readouterr().out
    assert main([*args, "--accept-shrink", "patients,apointments"]) == 2
    assert "unknown entities apointments" in capsys.readouterr().err
    assert main([*args, "--accept-shrink", "patients,appointments"]) == 0
    assert rows(tmp_path, "raw.patients") == 1


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_a_bad_allowed_drop_is_a_clear_failure(value):
    from core.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="INGEST_MAX_DROP"):
        Settings.from_environ({"INGEST_MAX_DROP": value})


@pytest.mark.dbt
def test_after_a_failed_export_segments_and_work_lists_stay_as_they_were(
    tmp_path, monkeypatch, capsys
):
    import shutil

    import sqlalchemy as sa

    from extract.synthetic import generate_clinic
    from workflow.store import members

    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 's.db'}")
    monkeypatch.setenv("OUTBOUND_SEND_DISABLED", "1")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    good = tmp_path / "2026-11-30"
    generate_clinic(300, good, seed=7, fmt="csv", as_of=None)
    assert main(["run", "--extracts", str(good), "--as-of", "2026-11-30"]) == 0

    def state() -> tuple[list, list]:
        con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
        try:
            membership = con.execute(
                "select segment_slug, count(*), max(as_of) from segments.membership "
                "group by 1 order by 1"
            ).fetchall()
        finally:
            con.close()
        engine = sa.create_engine(f"sqlite:///{tmp_path / 's.db'}")
        with engine.connect() as conn:
            worklists = conn.execute(
                sa.select(members.c.worklist_slug, members.c.left_segment, sa.func.count())
                .group_by(members.c.worklist_slug, members.c.left_segment)
                .order_by(members.c.worklist_slug, members.c.left_segment)
            ).all()
        engine.dispose()
        return membership, [tuple(r) for r in worklists]

    before = state()
    assert before[0] and before[1]
    # The PMS export fails overnight: the files are written with a header and no rows.
    bad = tmp_path / "2026-12-01"
    shutil.copytree(good, bad)
    for name in ("patients.csv", "appointments.csv"):
        header = (good / name).read_text().splitlines()[0]
        (bad / name).write_text(header + "\n")
    capsys.readouterr()
    assert main(["run", "--extracts", str(bad), "--as-of", "2026-12-01"]) == 1
    assert "looks like a failed export" in capsys.readouterr().out
    assert state() == before


def test_the_shrink_check_counts_records_not_lines(tmp_path):
    """Four patients whose notes hold line breaks are twelve lines but four records: 60%
    fewer than yesterday's ten, refused on the independent count inside the swap."""
    assert run(tmp_path, write_extract(tmp_path / "d1", 10), "2026-11-30").success
    bad = write_extract(tmp_path / "d2", 10)
    (bad / "patients.csv").write_text(
        "patient_id,first_name,notes\n"
        + "".join(f'p{i},Pat{i},"first line\nsecond\nthird"\n' for i in range(4))
    )
    result = run(tmp_path, bad, "2026-12-01")
    assert not result.success
    _, message = failure(result)
    assert "patients: 4 rows, 60% fewer than the 10 of the last accepted load of 2026-11-30" in (
        message
    )
    assert rows(tmp_path, "raw.patients") == 10
