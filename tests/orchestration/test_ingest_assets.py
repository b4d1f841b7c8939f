"""The ingest assets, checks, sensor and CLI wired through Dagster on a tiny extract."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from clinic_audiences.cli import main
from orchestration.ingest import EXTRACTS_TAG, build_ingest_assets
from orchestration.resources import ClinicSettingsResource, WarehouseResource
from orchestration.sensors import new_extract_folder_sensor


def write_extract(
    folder: Path, appointments_header: str = "appointment_id,patient_id,starts_at"
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "patients.csv").write_text(
        "patient_id,first_name,date_of_birth\n"
        "1,Ann,1980-01-01\n2,Bo,1987-13-02\n1,Ann B,1980-01-01\n"
    )
    (folder / "appointments.csv").write_text(
        f"{appointments_header}\na1,1,2026-01-05T09:00:00Z\n"
        if "starts_at" in appointments_header
        else f"{appointments_header}\na1,1\n"
    )


def resources(tmp_path: Path, extract: Path) -> dict:
    return {
        "warehouse": WarehouseResource(duckdb_path=str(tmp_path / "w.duckdb")),
        "settings": ClinicSettingsResource(extracts_dir=str(extract)),
    }


def test_materialising_ingest_records_counts_and_passes_the_row_check(tmp_path):
    extract = tmp_path / "extract"
    write_extract(extract)
    result = dg.materialize(build_ingest_assets(), resources=resources(tmp_path, extract),
                            partition_key="2026-11-25")
    assert result.success
    [patients] = [
        m.metadata
        for m in result.asset_materializations_for_node("ingest_extract")
        if m.asset_key == dg.AssetKey(["raw", "patients"])
    ]
    # 3 rows in: patient 2 has a bad date, the first patient 1 is replaced by the last.
    assert (
        patients["rows_in"].value,
        patients["rows_loaded"].value,
        patients["rows_rejected"].value,
    ) == (3, 1, 2)
    checks = {(e.asset_key.path[-1], e.passed) for e in result.get_asset_check_evaluations()}
    assert ("patients", True) in checks and ("appointments", True) in checks
    assert len(checks) == 12
    # Metadata never shows the rejected values themselves (no patient data in the UI).
    assert "1987-13-02" not in patients["rejection_reasons"].value


def test_a_missing_required_column_fails_that_asset_with_the_message(tmp_path):
    extract = tmp_path / "extract"
    write_extract(extract, appointments_header="appointment_id,patient_id")
    result = dg.materialize(
        build_ingest_assets(), resources=resources(tmp_path, extract), raise_on_error=False,
        partition_key="2026-11-25",
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    # The extract is loaded as one: the whole step fails, naming the file, and nothing of
    # it (not even the good patients file) is loaded.
    assert [e.step_key for e in failures] == ["ingest_extract"]
    assert not result.get_asset_materialization_events()
    description = failures[0].step_failure_data.user_failure_data.description
    assert "required column 'starts_at' is missing" in description
    assert str(extract / "appointments.csv") in description


def test_sensor_requests_one_run_per_new_dated_folder(tmp_path):
    root = tmp_path / "extracts"
    settings = ClinicSettingsResource(extracts_root=str(root))
    context = dg.build_sensor_context(resources={"settings": settings})
    assert isinstance(new_extract_folder_sensor(context), dg.SkipReason)

    (root / "2026-11-25").mkdir(parents=True)
    (root / "not-a-date").mkdir()
    request = new_extract_folder_sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == "2026-11-25"
    assert request.tags[EXTRACTS_TAG] == str(root / "2026-11-25")

    context = dg.build_sensor_context(cursor="2026-11-25", resources={"settings": settings})
    assert isinstance(new_extract_folder_sensor(context), dg.SkipReason)
    (root / "2026-11-26").mkdir()
    assert new_extract_folder_sensor(context).run_key == "2026-11-26"


def test_sensor_ignores_folders_no_partition_can_hold(tmp_path):
    """A folder dated after today, an impossible date or a day before the first partition
    neither runs nor holds back the newest real one."""
    from datetime import date, timedelta

    root = tmp_path / "extracts"
    later = (date.today() + timedelta(days=5)).isoformat()
    for name in ("2009-06-01", "2026-11-25", "2026-13-45", later):
        (root / name).mkdir(parents=True)
    settings = ClinicSettingsResource(extracts_root=str(root))
    request = new_extract_folder_sensor(dg.build_sensor_context(resources={"settings": settings}))
    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == "2026-11-25"
    only_old = tmp_path / "old"
    (only_old / "2009-06-01").mkdir(parents=True)
    skipped = new_extract_folder_sensor(dg.build_sensor_context(
        resources={"settings": ClinicSettingsResource(extracts_root=str(only_old))}))
    assert isinstance(skipped, dg.SkipReason)


def test_cli_run_and_clear_errors(tmp_path, monkeypatch, capsys):
    extract = tmp_path / "extract"
    write_extract(extract)
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "cli.duckdb"))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)

    assert main(["run", "--extracts", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["run", "--extracts", str(extract), "--as-of", "26/11/2026"]) == 2
    assert "write it as YYYY-MM-DD" in capsys.readouterr().err

    assert main(["run", "--extracts", str(extract), "--select", "nothing"]) == 2
    assert "matches no asset" in capsys.readouterr().err
    # Ingest only (the dbt and later stages are covered by their own tests).
    assert (
        main(["run", "--extracts", str(extract), "--as-of", "2026-11-26", "--select", "raw"]) == 0
    )
    out = capsys.readouterr().out
    assert "✓ ingest_extract" in out
    con = duckdb.connect(str(tmp_path / "cli.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*) from raw.patients").fetchall() == [(1,)]
    finally:
        con.close()
    assert "Ann" not in out  # the summary shows counts, never patient data


@pytest.mark.parametrize("command", [["validate", "--help"], ["campaigns", "dry-run", "--help"]])
def test_cli_help_is_available(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 0


def test_the_last_partition_is_today_in_the_clinic_zone():
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from orchestration.resources import daily_partitions

    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):  # UTC+14 and UTC-11
        today = datetime.now(ZoneInfo(zone)).date().isoformat()
        assert daily_partitions(zone).get_last_partition_key() == today


def test_a_day_without_a_named_extract_reads_its_own_day_or_the_one_before(tmp_path):
    """A run (or a UI backfill) for day D with no folder given loads the extract dated D,
    else the newest before D: never a later day's."""
    from datetime import date

    import dagster as dg

    from orchestration.ingest import resolve_extract

    root = tmp_path / "extracts"
    for day in ("2026-11-20", "2026-11-22", "2026-11-25"):
        (root / day).mkdir(parents=True)
    settings = ClinicSettingsResource(extracts_root=str(root))
    assert resolve_extract({}, settings, date(2026, 11, 22))[0].name == "2026-11-22"
    assert resolve_extract({}, settings, date(2026, 11, 24))[0].name == "2026-11-22"
    assert resolve_extract({}, settings, None)[0].name == "2026-11-25"
    with pytest.raises(dg.Failure, match="dated 2026-11-19 or earlier"):
        resolve_extract({}, settings, date(2026, 11, 19))
