"""The CLI as people read it: the field catalogue, tables without frame dumps, a closed
pipe that ends quietly, and a Dagster home that keeps usage statistics in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clinic_audiences.cli import main

AUDIENCES = [sys.executable, "-m", "clinic_audiences.cli"]


def test_fields_lists_types_operators_and_meanings(capsys):
    assert main(["fields", "--entity", "case"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[3:] if line.strip()}
    # days_until_expiry: a whole number in the marts' contract (bigint), so it is
    # compared with the order operators, and its description comes from the dbt docs.
    assert lines["days_until_expiry"].split()[1] == "integer"
    assert "between" in lines["days_until_expiry"] and "contains" not in lines[
        "days_until_expiry"]
    assert "expiry_date" in lines["days_until_expiry"]
    # A polars frame prints its shape and dtypes; a table for people does not.
    assert "shape:" not in out and "str" not in out.split()[:20]
    # Patient fields are not case fields.
    assert "first_name" not in lines


def test_fields_refuses_an_unknown_entity(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fields", "--entity", "lead"])
    assert exit_.value.code == 2
    assert "invalid choice: 'lead'" in capsys.readouterr().err


def test_a_reader_that_stops_early_ends_the_command_quietly():
    proc = subprocess.Popen([*AUDIENCES, "fields"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    # The reader is gone before the command prints its first line (like `| head -0`), so
    # its very first write meets a closed pipe.
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "Broken pipe" not in err


def test_a_new_dagster_home_gets_a_configuration_without_telemetry(tmp_path, monkeypatch):
    import yaml

    from clinic_audiences.runner import ensure_dagster_home

    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert ensure_dagster_home() == home
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False}
    assert config["run_queue"] == {"max_concurrent_runs": 1}
    # An existing configuration is the user's: never overwritten.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    ensure_dagster_home()
    assert "enabled: true" in Path(home / "dagster.yaml").read_text()
