"""`unique_key`, the test on the largest tables' keys: a key given twice fails it, and a
warehouse without repeats passes (the tiny clinic's build runs it, see conftest)."""

import shutil

import duckdb
import pytest

pytestmark = pytest.mark.dbt

TEST = "unique_key_stg_raw__appointments_appointment_id"


def test_a_repeated_appointment_id_fails_unique_key(dbt_cli, tiny_warehouse, tmp_path):
    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(tiny_warehouse.raw_only, path)
    with duckdb.connect(str(path)) as con:
        before = con.execute("select count(*) from raw.appointments").fetchall()[0][0]
        # One row repeated twice over (three rows of one id) and one repeated once.
        con.execute("insert into raw.appointments select * from raw.appointments "
                    "where appointment_id = (select min(appointment_id) from raw.appointments)")
        con.execute("insert into raw.appointments select * from raw.appointments "
                    "where appointment_id = (select min(appointment_id) from raw.appointments)")
        con.execute("insert into raw.appointments select * from raw.appointments "
                    "where appointment_id = (select max(appointment_id) from raw.appointments)")
        assert con.execute("select count(*) from raw.appointments").fetchall()[0][0] == before + 4
    built = dbt_cli(["run", "--select", "stg_raw__appointments"], path)
    assert built.returncode == 0, built.stdout
    failed = dbt_cli(["test", "--select", TEST], path)
    assert failed.returncode != 0
    # Two keys repeat: the test reports two rows.
    assert f"Failure in test {TEST}" in failed.stdout
    assert "Got 2 results" in failed.stdout, failed.stdout[-3000:]


def test_unique_key_passes_on_the_tiny_clinic(dbt_cli, tiny_warehouse, tmp_path):
    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(tiny_warehouse.path, path)
    passed = dbt_cli(["test", "--select", TEST], path)
    assert passed.returncode == 0, passed.stdout[-3000:]
    assert f"PASS {TEST}" in passed.stdout, passed.stdout[-3000:]
