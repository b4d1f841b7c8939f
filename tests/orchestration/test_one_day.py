"""One truth for the day: every stage computes for the run's as-of day (its partition),
and a question about a day the warehouse is not built for is refused, never answered
with another day's marts or membership.

Runs the real CLI (`audiences run`, Dagster in-process, real dbt) on a small generated
clinic. Expected outcomes are the contract's: which days are refused, and how many days
of membership a backfill records.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from clinic_audiences.cli import main
from extract.synthetic import generate_clinic

pytestmark = pytest.mark.dbt

BUILT = date(2026, 11, 20)
NEXT = BUILT + timedelta(days=1)


@pytest.fixture(scope="module")
def clinic(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one-day")
    generate_clinic(400, folder / "extract", seed=7, fmt="csv", as_of=BUILT)
    return folder


@pytest.fixture
def env(clinic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "w.duckdb"))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 's.db'}")
    monkeypatch.setenv("CLINIC_TIMEZONE", "Australia/Sydney")
    monkeypatch.setenv("OUTBOUND_SEND_DISABLED", "1")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("SEGMENTS_PATH", raising=False)
    return clinic / "extract"


def run(*args: str) -> int:
    return main(list(args))


def segment_days(db: Path) -> list[date]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.sql("select distinct as_of from segments.segment_runs order by 1").fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def test_other_days_are_refused_and_a_backfill_records_each_day(env, tmp_path, capsys):
    assert run("run", "--extracts", str(env), "--as-of", BUILT.isoformat()) == 0
    capsys.readouterr()

    # Segments for the next day on the marts of BUILT: refused, naming both days.
    assert run("run", "--extracts", str(env), "--as-of", NEXT.isoformat(),
               "--select", "segments") == 1  # fmt: skip
    out = capsys.readouterr().out
    assert f"needs the marts of {NEXT}, but the warehouse is built for {BUILT}" in out
    assert segment_days(tmp_path / "w.duckdb") == [BUILT]

    # A preview for another day: refused the same way (exit 2, nothing counted).
    definition = "segments/definitions/lapsed-physio-6-12mo.yaml"
    assert run("preview", definition, "--as-of", NEXT.isoformat()) == 2
    captured = capsys.readouterr()
    assert f"the warehouse is built for {BUILT}" in captured.out + captured.err

    # A dry run for another day: neither its marts nor its membership exist, so no plan.
    assert run("campaigns", "dry-run", "--as-of", NEXT.isoformat()) != 0
    captured = capsys.readouterr()
    assert (f"a send plan for {NEXT} needs the marts of {NEXT}, but the warehouse is built "
            f"for {BUILT}") in captured.out + captured.err  # fmt: skip

    # The built day itself still answers ...
    assert run("preview", definition, "--as-of", BUILT.isoformat()) == 0
    capsys.readouterr()
    # ... but not in another time zone: ages and days in the marts are Sydney's.
    with pytest.MonkeyPatch.context() as elsewhere:
        elsewhere.setenv("CLINIC_TIMEZONE", "Pacific/Honolulu")
        assert run("preview", definition, "--as-of", BUILT.isoformat()) == 2
        captured = capsys.readouterr()
        assert ("needs marts built in that time zone, but the warehouse was built in "
                "Australia/Sydney") in captured.out + captured.err  # fmt: skip
        assert run("campaigns", "dry-run", "--as-of", BUILT.isoformat()) != 0
        captured = capsys.readouterr()
        assert "was built in Australia/Sydney" in captured.out + captured.err

    # A three-day backfill: three more days of membership, each day its own run.
    first, last = NEXT, NEXT + timedelta(days=2)
    assert run("run", "--extracts", str(env), "--from", first.isoformat(),
               "--to", last.isoformat()) == 0  # fmt: skip
    assert segment_days(tmp_path / "w.duckdb") == [BUILT + timedelta(days=n) for n in range(4)]
    assert run("campaigns", "dry-run", "--as-of", last.isoformat()) == 0
    capsys.readouterr()

    # An earlier day after a later one: refused for segments and work lists alike, and
    # the history keeps no interval that ends before it begins.
    assert run("run", "--extracts", str(env), "--as-of", NEXT.isoformat()) == 1
    out = capsys.readouterr().out
    assert f"has been evaluated for {last}, after {NEXT}" in out
    # Work lists alone, for that earlier day: they would move back in time; refused.
    assert run("run", "--extracts", str(env), "--as-of", NEXT.isoformat(),
               "--select", "worklists") == 1  # fmt: skip
    out = capsys.readouterr().out
    assert "work list of segment" in out and f"follows its latest day, {last}" in out
    assert segment_days(tmp_path / "w.duckdb") == [BUILT + timedelta(days=n) for n in range(4)]
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        inverted = con.sql("select count(*) from segments.membership_history "
                           "where exited_on < entered_on").fetchall()[0][0]  # fmt: skip
    finally:
        con.close()
    assert inverted == 0


def test_a_day_before_the_first_partition_is_refused(env, tmp_path, capsys):
    assert run("run", "--extracts", str(env), "--as-of", "2009-12-31") == 2
    assert "before 2010-01-01, the first day" in capsys.readouterr().err
    assert run("run", "--extracts", str(env), "--from", "2009-12-31", "--to",
               "2010-01-02") == 2  # fmt: skip
    assert "--from 2009-12-31 is before 2010-01-01" in capsys.readouterr().err
    assert not (tmp_path / "w.duckdb").exists()


def test_a_day_after_today_is_refused_before_anything_runs(env, tmp_path, capsys):
    far = date.today() + timedelta(days=3)
    assert run("run", "--extracts", str(env), "--as-of", far.isoformat()) == 2
    assert "is after today" in capsys.readouterr().err
    assert not (tmp_path / "w.duckdb").exists()
    assert run("run", "--extracts", str(env), "--from", BUILT.isoformat(),
               "--to", far.isoformat()) == 2  # fmt: skip
    assert f"--to {far} is after today" in capsys.readouterr().err
    assert not (tmp_path / "w.duckdb").exists()
