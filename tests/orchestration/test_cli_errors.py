"""Settings and arguments a user can get wrong: one clear line and exit 2, never a
traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clinic_audiences.cli import main


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 's.db'}")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("SEGMENTS_PATH", raising=False)
    return tmp_path


@pytest.mark.parametrize("day", ["20261201", "2026-W49-2", "2026-12-1", "01/12/2026"])
def test_only_a_yyyy_mm_dd_day_is_an_as_of_day(env, capsys, day):
    (env / "x").mkdir()
    assert main(["run", "--extracts", str(env / "x"), "--as-of", day]) == 2
    assert f"--as-of {day!r} is not a date; write it as YYYY-MM-DD" in capsys.readouterr().err


@pytest.mark.parametrize("zone", ["America", "Australia", "Etc", "Mars/Olympus"])
def test_a_time_zone_folder_is_not_a_time_zone(env, monkeypatch, capsys, zone):
    monkeypatch.setenv("CLINIC_TIMEZONE", zone)
    (env / "x").mkdir()
    assert main(["run", "--extracts", str(env / "x")]) == 2
    assert f"CLINIC_TIMEZONE {zone!r} is not an IANA time zone" in capsys.readouterr().err
    assert main(["campaigns", "dry-run"]) == 2
    assert "is not an IANA time zone" in capsys.readouterr().err


def test_a_missing_segments_folder_is_named(env, monkeypatch, capsys):
    monkeypatch.setenv("SEGMENTS_PATH", str(env / "nowhere"))
    assert main(["campaigns", "list"]) == 2
    err = capsys.readouterr().err
    assert f"SEGMENTS_PATH {env / 'nowhere'} is not a folder" in err and "Traceback" not in err


WRITER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("create table t (x int)")
print("open", flush=True)
time.sleep(60)
"""


def test_readers_of_a_warehouse_being_written_are_told_so(env, capsys):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(env / "w.duckdb")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "open"
        for command in (["members", "lapsed-physio-6-12mo"], ["campaigns", "dry-run"],
                        ["segments", "list"]):  # fmt: skip
            code = main(command)
            out, err = capsys.readouterr()
            said = out + err
            assert "is open for writing by" in said and "Traceback" not in said, command
            assert code in (0, 2)  # `segments list` still lists, without member counts
    finally:
        writer.kill()
        writer.wait()
    assert Path(env / "w.duckdb").exists()


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("STATE_DB_URL", "garbage", "STATE_DB_URL is not a SQLite or PostgreSQL URL"),
        ("STATE_DB_URL", "postgres://u@h/db", "SQLAlchemy needs postgresql://"),
        ("STATE_DB_URL", "mysql://u@h/db", "STATE_DB_URL is not a SQLite or PostgreSQL URL"),
        ("DUCKDB_MEMORY_LIMIT", "abc", "DUCKDB_MEMORY_LIMIT 'abc' is not an amount of memory"),
        # DuckDB reads a number without a unit as nothing it knows; a kilobyte is no room.
        ("DUCKDB_MEMORY_LIMIT", "512", "DUCKDB_MEMORY_LIMIT '512' is not an amount of memory"),
        ("DUCKDB_MEMORY_LIMIT", "1KB", "DUCKDB_MEMORY_LIMIT '1KB' is too little"),
        ("DUCKDB_PATH", "{tmp}", "is a folder; point it at the warehouse file"),
    ],
)
@pytest.mark.parametrize("command", [["campaigns", "dry-run"], ["segments", "list"],
                                     ["run", "--extracts", "{tmp}/x"]])  # fmt: skip
def test_a_bad_setting_is_one_line_whatever_the_command(env, monkeypatch, capsys, name, value,
                                                        words, command):  # fmt: skip
    (env / "x").mkdir()
    monkeypatch.setenv(name, value.format(tmp=env))
    assert main([part.format(tmp=env) for part in command]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_state_store_that_cannot_be_opened_is_one_line(env, monkeypatch, capsys):
    blocker = env / "file"
    blocker.write_text("")  # its "folder" is a file: SQLite cannot create the database
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{blocker}/sub/s.db")
    assert main(["worklist", "show", "waitlist"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {blocker}/sub: Not a directory\n"


def test_generate_into_a_file_is_one_line(env, capsys):
    (env / "taken").write_text("")
    assert main(["generate", "--patients", "3", "--out", str(env / "taken")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
