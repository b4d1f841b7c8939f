"""Bad settings and a warehouse without raw tables stop dbt with one message saying how
to fix it, before any model is built."""

import duckdb
import pytest

pytestmark = pytest.mark.dbt


def test_warehouse_without_raw_tables(dbt_cli, tmp_path):
    path = tmp_path / "not_ingested.duckdb"
    duckdb.connect(str(path)).close()
    completed = dbt_cli(["build", "--select", "warehouse_as_of"], path)
    assert completed.returncode != 0
    assert "lacks raw.appointment_types, raw.appointments" in completed.stdout
    assert "audiences run --extracts DIR" in completed.stdout


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"as_of": "2023-02-29", "clinic_timezone": "UTC"}, "as_of '2023-02-29' is not a date"),
        ({"as_of": "2024-13-01", "clinic_timezone": "UTC"}, "as_of '2024-13-01' is not a date"),
        (
            {"as_of": "2024-03-01", "clinic_timezone": "Sydney"},
            "clinic_timezone 'Sydney' is not an IANA time zone",
        ),
    ],
)
def test_bad_vars_fail_at_compile_time(dbt_cli, tmp_path, variables, message):
    path = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(path)).close()
    completed = dbt_cli(["compile", "--select", "warehouse_as_of"], path, variables)
    assert completed.returncode != 0
    assert message in completed.stdout
