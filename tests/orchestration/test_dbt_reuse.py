"""A dbt build is not run again when its inputs are those of its last clean build, and is
run whenever anything it was built from, or anything it built, may have changed; a
segment is not evaluated again from the same marts build, definition and code.

The flow runs the real CLI (`audiences run`, Dagster in-process, real dbt) on a small
generated clinic; the unit tests below it check the fingerprint of a build's inputs on a
DuckDB file alone. Whether a build ran is read from the warehouse itself: the time
`marts.warehouse_as_of` was built, and the records in `raw.__dbt_builds`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import duckdb
import pytest

from clinic_audiences.cli import main
from extract.synthetic import generate_clinic
from ingest import unchanged
from orchestration import dbt_builds
from orchestration.dbt import DBT_PROJECT_DIR

BUILT = date(2026, 11, 20)
WAREHOUSE_ONLY = ("--select", "raw,staging,intermediate,marts")


def built_at(db: Path) -> datetime:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.sql("select built_at from marts.warehouse_as_of").fetchall()[0][0]


def records(db: Path) -> list[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.sql(f"select build from {dbt_builds.TABLE} order by 1").fetchall()
    return [r[0] for r in rows]


@pytest.mark.dbt
def test_a_rerun_reuses_the_build_and_any_change_builds_again(tmp_path, monkeypatch, capsys):
    extract = tmp_path / "extract"
    generate_clinic(400, extract, seed=11, fmt="csv", as_of=BUILT)
    # One appointment of a patient missing from the extract: the relationships test warns.
    appointments = extract / "appointments.csv"
    header, first_row, *rest = appointments.read_text().splitlines(keepends=True)
    fields = first_row.split(",")
    fields[header.split(",").index("patient_id")] = "999999"
    appointments.write_text("".join([header, ",".join(fields), *rest]))
    orphan_warning = ("! check staging/stg_raw__appointments:"
                      "relationships_stg_raw__appointments_patient_id")  # fmt: skip
    db = tmp_path / "w.duckdb"
    monkeypatch.setenv("DUCKDB_PATH", str(db))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 's.db'}")
    monkeypatch.setenv("CLINIC_TIMEZONE", "Australia/Sydney")
    monkeypatch.setenv("OUTBOUND_SEND_DISABLED", "1")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("SEGMENTS_PATH", raising=False)

    def run(*extra: str) -> str:
        assert main(["run", "--extracts", str(extract), "--as-of", BUILT.isoformat(), *extra]) == 0
        return capsys.readouterr().out

    assert orphan_warning in run()
    assert records(db) == ["analytics_dbt_assets", "warehouse_dbt_assets"]
    first = built_at(db)

    # The same day on the same extract: neither build runs, and every step after them does.
    out = run()
    assert "warehouse_dbt_assets: not run: its inputs" in out
    assert "analytics_dbt_assets: not run: its inputs" in out
    # The warning of the recorded build is given again: the same tables warn the same way.
    assert orphan_warning in out
    # Segments evaluated from the same marts build, definitions and code: not again.
    assert "segments__waitlist: not evaluated again: its membership of 2026-11-20" in out
    # ... nor their work lists synced again.
    assert "worklists__lapsed_physio_6_12mo: not synced again" in out
    assert built_at(db) == first
    for step in ("segments__waitlist", "worklists__lapsed_physio_6_12mo", "outbound__send_plan",
                 "analytics_dbt_assets"):  # fmt: skip
        assert f"✓ {step}" in out
    with duckdb.connect(str(db), read_only=True) as con:
        days = con.sql("select distinct as_of from segments.segment_runs").fetchall()
    assert days == [(BUILT,)]

    # A model dropped from the warehouse: built again, and the view is back.
    with duckdb.connect(str(db)) as con:
        con.execute("drop view staging.stg_raw__leads")
    out = run(*WAREHOUSE_ONLY)
    assert "dbt build runs: staging.stg_raw__leads no longer in the warehouse" in out
    second = built_at(db)
    assert second > first
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("select count(*) from staging.stg_raw__leads").fetchall()[0][0] > 0

    # dbt run by hand (an analyst, another day): every record is dropped, so the pipeline
    # builds again rather than trust tables it may no longer have built.
    env = {**os.environ, "DUCKDB_PATH": str(db)}
    dbt = shutil.which("dbt", path=str(Path(sys.executable).parent)) or "dbt"
    subprocess.run([dbt, "run", "--select", "warehouse_as_of", "--vars", '{"as_of": "2026-11-01"}',
                    "-q"], cwd=DBT_PROJECT_DIR, env=env, check=True)  # fmt: skip
    assert records(db) == []
    out = run(*WAREHOUSE_ONLY)
    assert "warehouse_dbt_assets: dbt build runs: no clean build recorded" in out
    third = built_at(db)
    assert third > second
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("select as_of from marts.warehouse_as_of").fetchall() == [(BUILT,)]

    # One extract file written again (same bytes, a new modification time): ingest loads
    # it, so its load record changes and the warehouse is built again.
    leads = extract / "leads.csv"
    stat = leads.stat()
    os.utime(leads, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    out = run(*WAREHOUSE_ONLY)
    assert "dbt build runs: its inputs changed since its last clean build" in out
    assert built_at(db) > third

    # Marts built again: every segment is evaluated again, then reused on the next rerun.
    out = run()
    assert "not evaluated again" not in out and "✓ segments__waitlist" in out
    assert "not synced again" not in out
    out = run()
    assert "segments__waitlist: not evaluated again" in out
    assert "worklists__lapsed_physio_6_12mo: not synced again" in out


# -- the fingerprint of a build's inputs, on a DuckDB file alone ----------------------------


@pytest.fixture
def con(tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        unchanged.ensure_table(con)
        for entity in ("patients", "appointments"):
            src = unchanged.Source(f"/x/{entity}.csv", f'[["{entity}.csv", 10, 1]]', "{}")
            unchanged.record(con, entity, src, 3, 3, 0)
        con.execute("create schema outbound")
        con.execute("create table outbound.send_ledger (id int, status varchar)")
        con.execute("insert into outbound.send_ledger values (1, 'sent'), (2, 'failed')")
        yield con


def fingerprint(con, raw=("patients", "appointments"), other=(), variables="{}", project="p"):
    return dbt_builds.inputs(con, raw, other, variables, project)


def test_the_same_inputs_give_the_same_fingerprint_and_each_input_counts(con):
    base = fingerprint(con).fingerprint
    assert base is not None
    assert fingerprint(con, raw=("appointments", "patients")).fingerprint == base
    assert fingerprint(con, variables='{"as_of": "2026-11-21"}').fingerprint != base
    assert fingerprint(con, project="q").fingerprint != base
    # A reload of one entity (another file size) changes it.
    src = unchanged.Source("/x/patients.csv", '[["patients.csv", 11, 2]]', "{}")
    unchanged.record(con, "patients", src, 3, 3, 0)
    assert fingerprint(con).fingerprint != base


def test_a_raw_table_without_a_load_record_makes_the_inputs_unknown(con):
    found = fingerprint(con, raw=("patients", "appointments", "leads"))
    assert found.fingerprint is None and found.missing == "no load record for raw.leads"
    # An entity loaded without a source (its record dropped): unknown as well.
    unchanged.record(con, "patients", None, 0, 0, 0)
    assert fingerprint(con).missing == "no load record for raw.patients"


def test_other_tables_count_by_their_rows_in_any_order(con):
    ledger = [("outbound", "send_ledger")]
    base = fingerprint(con, other=ledger).fingerprint
    con.execute("create table outbound.copy as select * from outbound.send_ledger order by id desc")
    con.execute("drop table outbound.send_ledger")
    con.execute("alter table outbound.copy rename to send_ledger")
    assert fingerprint(con, other=ledger).fingerprint == base
    con.execute("update outbound.send_ledger set status = 'sent' where id = 2")
    assert fingerprint(con, other=ledger).fingerprint != base
    con.execute("drop table outbound.send_ledger")
    assert fingerprint(con, other=ledger).missing == "outbound.send_ledger not in the warehouse"


def test_the_project_digest_follows_every_file_dbt_reads(tmp_path):
    project = tmp_path / "dbt_project"
    shutil.copytree(DBT_PROJECT_DIR, project, ignore=shutil.ignore_patterns("target", "logs"))
    env = {"HOME": "/root"}
    base = dbt_builds.project_digest(project, env)
    assert dbt_builds.project_digest(project, {**env, "PATH": "/usr/bin"}) == base
    macro = project / "macros" / "clinic_dates.sql"
    macro.write_text(macro.read_text() + "\n")
    assert dbt_builds.project_digest(project, env) != base
    changed = dbt_builds.project_digest(project, env)
    (project / "models" / "marts" / "new_model.sql").write_text("select 1 as x")
    assert dbt_builds.project_digest(project, env) != changed


def test_dbt_flags_in_the_environment_are_inputs_of_a_build():
    # DBT_EMPTY builds every model with no rows; DBT_WARN_ERROR fails on a warning.
    env = {"HOME": "/root"}
    base = dbt_builds.project_digest(DBT_PROJECT_DIR, env)
    assert dbt_builds.project_digest(DBT_PROJECT_DIR, {**env, "DBT_EMPTY": "1"}) != base
    assert dbt_builds.project_digest(DBT_PROJECT_DIR, {**env, "DBT_WARN_ERROR": "true"}) != base


def test_a_build_reading_another_builds_models_follows_that_builds_record(con):
    def fp():
        return dbt_builds.inputs(con, ("patients",), (), "{}", "p", ("warehouse",))

    assert fp().missing == "the models it reads from warehouse have no recorded build"
    dbt_builds.remember(con, "warehouse", "f1", "run-1", [])
    first = fp().fingerprint
    assert first is not None and fp().fingerprint == first
    # The same inputs built again by another run: its models were rebuilt, so this changes.
    dbt_builds.remember(con, "warehouse", "f1", "run-2", [])
    assert fp().fingerprint != first


def test_only_a_build_where_every_node_succeeded_passed_or_warned_is_recorded():
    ok = {"results": [{"unique_id": "model.a", "status": "success"},
                      {"unique_id": "test.b", "status": "pass"},
                      {"unique_id": "test.c", "status": "warn"}]}  # fmt: skip
    assert dbt_builds.clean_run(ok) == ""
    failed = {"results": [*ok["results"], {"unique_id": "test.d", "status": "fail"}]}
    assert dbt_builds.clean_run(failed) == "test.d (fail)"
    skipped = {"results": [{"unique_id": "model.e", "status": "skipped"},
                           {"unique_id": "model.f", "status": "error"}]}  # fmt: skip
    assert dbt_builds.clean_run(skipped) == "model.e (skipped), model.f (error)"
