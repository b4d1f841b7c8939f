"""Knowing that a dbt build would build exactly what the warehouse already holds.

A rerun of a day on an unchanged extract need not rebuild the warehouse models: their
tables were built from the same raw tables, with the same vars, by the same project. After
a build in which every model built and every test passed, the pipeline records in
`raw.__dbt_builds` what the build was made from (its inputs):

- every raw source table's load record in `raw.__ingested` (the files it was loaded
  from, their sizes and modification times, the day, the format and the loader's code);
- the `--vars` of the build (the as-of day and the clinic time zone);
- a digest of the dbt project (every file dbt parses, and the profile), of the dbt-core,
  adapter and DuckDB versions, and of every `DBT_*` environment variable (dbt's flags);
- for a build that reads models of another (the analytics models read the marts), that
  build's record.

A later build whose inputs are the same, and whose models are all still in the warehouse,
is not run: its assets report the earlier build instead. Anything else builds: another
day, a reloaded entity, a raw table without a load record, a changed model or macro, a
dropped model, a subset of the models, or a build in which a node failed, errored or was
skipped (a test that warned is recorded with its outcome, and warns again). The record
is dropped before every build the pipeline starts, and any dbt run or build started by
hand (which may change the models) drops every record (the `forget_pipeline_builds`
on-run-start hook), so a record only ever describes the tables as they are.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import duckdb

from ingest import unchanged

TABLE = "raw.__dbt_builds"
# The files dbt reads to build (the profile too: it sets the session's time zone).
PROJECT_FILES = ("dbt_project.yml", "profiles.yml", "packages.yml", "dependencies.yml")
PROJECT_DIRS = ("models", "macros", "tests", "seeds", "snapshots", "analyses", "dbt_packages")
# The engines: dbt, its adapter, and DuckDB itself (functions, time zone data).
ENGINE_PACKAGES = ("dbt-core", "dbt-duckdb", "duckdb")
# dbt reads flags from the environment (DBT_EMPTY builds every model empty, DBT_WARN_ERROR
# turns a warning into a failure, ...): every DBT_* variable is an input of a build.
ENV_PREFIX = "DBT_"
# A var every build the pipeline starts carries: the hook keeps the records of those.
PIPELINE_VAR = "pipeline_build"


def project_digest(project_dir: Path, environ: Mapping[str, str]) -> str:
    """A digest of everything that decides what a build makes besides its tables and vars:
    the dbt project's files, the engines' versions, and dbt's flags in the environment."""
    digest = hashlib.blake2b(digest_size=16)
    for package in ENGINE_PACKAGES:
        digest.update(f"{package}=={metadata.version(package)}\0".encode())
    flags = sorted((k, v) for k, v in environ.items() if k.upper().startswith(ENV_PREFIX))
    digest.update(json.dumps(flags).encode() + b"\0")
    files = [project_dir / name for name in PROJECT_FILES]
    for folder in PROJECT_DIRS:
        files += sorted(p for p in (project_dir / folder).rglob("*") if p.is_file())
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(project_dir)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Inputs:
    """What a build is made from, or why it cannot be known (`missing`)."""

    fingerprint: str | None
    missing: str = ""


def inputs(
    con: duckdb.DuckDBPyConnection,
    raw_tables: Iterable[str],
    other_tables: Iterable[tuple[str, str]],
    variables: str,
    project: str,
    upstream_builds: Iterable[str] = (),
) -> Inputs:
    """The inputs of a build reading `raw_tables` (known by their load records),
    `other_tables` (`(schema, name)`, known by their contents: the send ledger, written by
    the run itself) and the models of `upstream_builds` (known by those builds' records).
    Without a load record for every raw table (a table loaded some other way, or never),
    with another table absent, or with an upstream build unrecorded, they are unknown."""
    upstream = []
    for build in sorted(set(upstream_builds)):
        last = recorded(con, build)
        if last is None:
            return Inputs(None, f"the models it reads from {build} have no recorded build")
        upstream.append([build, last.fingerprint, last.run_id])
    unchanged.ensure_table(con)
    names = sorted(set(raw_tables))
    rows = con.execute(
        f"select entity, path, stats, conditions, rows_in, loaded, rejected "
        f"from {unchanged.TABLE} where entity in (select unnest(?)) order by entity",
        [names],
    ).fetchall()
    found = {row[0] for row in rows}
    lacking = [name for name in names if name not in found]
    if lacking:
        return Inputs(None, "no load record for raw." + ", raw.".join(lacking))
    others = sorted(set(other_tables))
    absent = missing_relations(con, others)
    if absent:
        return Inputs(None, f"{', '.join(absent)} not in the warehouse")
    contents = [
        # The multiset of the table's rows: count and the sum of every row's hash.
        con.execute(
            "select count(*), coalesce(sum(hash(t)::hugeint), 0)::varchar "
            f'from "{schema}"."{name}" t'
        ).fetchall()
        for schema, name in others
    ]
    payload = json.dumps(
        {"raw": rows, "tables": [others, contents], "vars": variables, "project": project,
         "upstream": upstream},
        default=str,
    )  # fmt: skip
    return Inputs(hashlib.blake2b(payload.encode(), digest_size=16).hexdigest())


COLUMNS = ["build", "fingerprint", "built_at", "run_id", "checks"]


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    """The records' table. A table of another shape (an older version) only held records,
    which may all be dropped: the next build runs in full and is recorded anew."""
    con.execute("create schema if not exists raw")
    columns = [r[0] for r in con.execute(
        "select column_name from information_schema.columns where table_schema = 'raw' "
        "and table_name = '__dbt_builds' order by ordinal_position").fetchall()]  # fmt: skip
    if columns and columns != COLUMNS:
        con.execute(f"drop table {TABLE}")
    con.execute(
        f"create table if not exists {TABLE} (build varchar primary key, "
        "fingerprint varchar, built_at timestamptz, run_id varchar, checks varchar)"
    )


@dataclass(frozen=True)
class Check:
    """One test's outcome in a recorded build, replayed when the build is reused: the
    same tables give the same outcome (a relationships test that warns warns again)."""

    asset: list[str]
    name: str
    passed: bool
    severity: str
    metadata: dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Build:
    fingerprint: str
    built_at: datetime
    run_id: str
    checks: list[Check]


def recorded(con: duckdb.DuckDBPyConnection, build: str) -> Build | None:
    ensure_table(con)
    rows = con.execute(
        f"select fingerprint, built_at, run_id, checks from {TABLE} where build = ?", [build]
    ).fetchall()
    if not rows:
        return None
    fingerprint, built_at, run_id, checks = rows[0]
    return Build(fingerprint, built_at, run_id, [Check(**c) for c in json.loads(checks or "[]")])


def forget(con: duckdb.DuckDBPyConnection, build: str) -> None:
    ensure_table(con)
    con.execute(f"delete from {TABLE} where build = ?", [build])


def remember(
    con: duckdb.DuckDBPyConnection, build: str, fingerprint: str, run_id: str,
    checks: list[Check],
) -> None:  # fmt: skip
    ensure_table(con)
    con.execute("BEGIN TRANSACTION")
    con.execute(f"delete from {TABLE} where build = ?", [build])
    con.execute(
        f"insert into {TABLE} values (?, ?, ?, ?, ?)",
        [build, fingerprint, datetime.now(UTC), run_id,
         json.dumps([c.__dict__ for c in checks])],
    )  # fmt: skip
    con.execute("COMMIT")


def missing_relations(
    con: duckdb.DuckDBPyConnection, relations: Iterable[tuple[str, str]]
) -> list[str]:
    """The `schema.name` relations (tables or views) that are not in the warehouse."""
    present = {
        (schema, name)
        for schema, name in con.execute(
            "select table_schema, table_name from information_schema.tables"
        ).fetchall()
    }
    return sorted(f"{s}.{n}" for s, n in relations if (s, n) not in present)


# A build may be recorded only when every node ended so. A test that warned is recorded
# with its outcome (its check result is replayed); a failure, an error or a skipped node
# is never reused.
CLEAN_STATUSES = frozenset({"success", "pass", "warn"})


def clean_run(run_results: dict) -> str:
    """'' when every node of the build succeeded, passed or warned, else which did not."""
    unclean = [
        f"{r.get('unique_id')} ({r.get('status')})"
        for r in run_results.get("results", [])
        if r.get("status") not in CLEAN_STATUSES
    ]
    return ", ".join(unclean)
