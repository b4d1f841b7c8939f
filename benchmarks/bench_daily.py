"""The whole daily run at N patients, stage by stage, each beside its baseline.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_daily.py --patients 1000000 \
        [--extract DIR] [--as-of 2026-06-30] [--timezone Australia/Sydney] [--workdir W]

Reads the extract once (into the OS cache, where the baselines find it too), then runs
`audiences run --extracts DIR --as-of DAY` (the real command: Dagster in process,
dbt, segments, work lists, outbound with sending disabled) on a fresh warehouse and state
store, in its own process (wall time, peak RSS of it and everything it starts), and then
once more on the same, unchanged extract (the rerun of a day). Each step's time is read
from the command's own step lines (`✓ step (12.3s)`) and summed per stage.

Then, in the same benchmark, the baselines:
  * ingest - DuckDB's `read_csv` of every extract file into a table of the contract's
    column types (no lineage, no checks, bad values skipped), summed over the files;
  * dbt    - the hand-written patient_features query of `bench_dbt.py` (one statement)
    on a copy of the raw warehouse the run produced.
Work lists, segments and outbound have their own benchmarks against their own baselines
(`bench_webapp.py`, `bench_segments.py`, `bench_outbound.py`); their times are shown here
beside the goals of the daily run.

The extract is generated (seed 7) unless `--extract` names one; a generated one is kept
under the workdir and reused.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import duckdb  # noqa: E402
from bench_dbt import BASELINE_SQL  # noqa: E402

from ingest.csv_reader import read_header  # noqa: E402
from ingest.entities import ENTITIES  # noqa: E402
from ingest.raw_tables import DUCKDB_TYPES  # noqa: E402

GIB = 1024**3
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr)\n"
    "sys.exit(code)\n"
)
STEP_LINE = re.compile(r"✓ (\S+) \((\d+(?:\.\d+)?)s\)")
# The stage a step belongs to, by the start of its key.
STAGES = (
    ("ingest", ("ingest_extract", "raw")),
    ("dbt", ("warehouse_dbt", "analytics_dbt", "dbt")),
    ("segments", ("segments", "segment")),
    ("work lists", ("worklist", "workflow")),
    ("outbound", ("outbound", "campaign", "case_reminder", "reminder", "tasks")),
)


def stage_of(step: str) -> str:
    for stage, prefixes in STAGES:
        if step.startswith(prefixes):
            return stage
    return "other"


def generate(patients: int, folder: Path, as_of: date) -> Path:
    if (folder / "patients.csv").exists():
        return folder
    from extract.synthetic import generate_clinic

    generate_clinic(patients, folder, seed=7, fmt="csv", as_of=as_of)
    return folder


def audiences_run(extract: Path, as_of: date, env: dict[str, str]) -> dict:
    """One `audiences run` in its own process: wall time, peak RSS, seconds per stage."""
    audiences = str(Path(sys.executable).parent / "audiences")
    command = [audiences, "run", "--extracts", str(extract), "--as-of", as_of.isoformat()]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-4000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"audiences run failed ({done.returncode})")
    peak = int(re.search(r"PEAK_RSS_KIB (\d+)", done.stderr).group(1)) * 1024
    stages: dict[str, float] = defaultdict(float)
    steps: list[tuple[str, float]] = []
    for step, seconds in STEP_LINE.findall(done.stdout):
        steps.append((step, float(seconds)))
        stages[stage_of(step)] += float(seconds)
    return {"wall": wall, "peak": peak, "stages": dict(stages), "steps": steps}


def warm(extract: Path) -> None:
    """Read every extract file once (into the OS cache)."""
    for path in sorted(extract.glob("*.csv")):
        with path.open("rb") as f:
            while f.read(1 << 23):
                pass


def ingest_baseline(extract: Path, db: Path) -> float:
    """DuckDB's reader loading every file into the contract's column types."""
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    total = 0.0
    for ent in ENTITIES:
        path = extract / ent.file_name
        if not path.exists():
            continue
        declared = {c.name: DUCKDB_TYPES[c.kind] for c in ent.columns}
        columns = {h: declared.get(h.strip().lower(), "VARCHAR") for h in read_header(path)}
        started = time.perf_counter()
        con.execute(f"create table {ent.name} as select * from read_csv(?, header = true, "
                    "columns = ?, ignore_errors = true)", [str(path), columns])  # fmt: skip
        total += time.perf_counter() - started
    con.close()
    db.unlink(missing_ok=True)
    return total


def dbt_baseline(warehouse: Path, copy: Path, as_of: date, timezone: str) -> float:
    """The hand-written patient_features query on a copy of the run's raw tables."""
    copy.unlink(missing_ok=True)
    con = duckdb.connect(str(copy), config={"threads": 2})
    con.execute("set TimeZone = 'UTC'")
    con.execute(f"attach '{warehouse}' as run (read_only)")
    con.execute("create schema raw")
    for (table,) in con.execute(
        "select table_name from information_schema.tables where table_catalog = 'run' "
        "and table_schema = 'raw'"
    ).fetchall():
        con.execute(f"create table raw.{table} as select * from run.raw.{table}")
    con.execute("detach run")
    con.execute("create schema bench")
    started = time.perf_counter()
    con.execute(BASELINE_SQL.replace("$tz", f"'{timezone}'").replace("$d", f"date '{as_of}'"))
    seconds = time.perf_counter() - started
    con.close()
    copy.unlink(missing_ok=True)
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--extract", type=Path, help="an extract folder (default: generate one)")
    ap.add_argument("--as-of", type=date.fromisoformat, default=date(2026, 6, 30))
    ap.add_argument("--timezone", default="Australia/Sydney")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-daily"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    extract = args.extract or generate(args.patients, args.workdir / f"extract-{args.patients}",
                                       args.as_of)  # fmt: skip
    if not (extract / "patients.csv").exists():
        print(f"error: {extract} holds no patients.csv", file=sys.stderr)
        return 2
    run_dir = args.workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    warehouse = run_dir / "warehouse.duckdb"
    env = {
        **os.environ,
        "DUCKDB_PATH": str(warehouse),
        "STATE_DB_URL": f"sqlite:///{run_dir / 'state.db'}",
        "CLINIC_TIMEZONE": args.timezone,
        "OUTBOUND_SEND_DISABLED": "1",
    }
    env.pop("DAGSTER_HOME", None)
    # The baselines read the extract right after the run, from the OS cache: the run
    # reads it from there too, so that both sides time parsing, not the disk.
    warm(extract)
    first = audiences_run(extract, args.as_of, env)
    again = audiences_run(extract, args.as_of, env)
    baselines = {
        "ingest": ingest_baseline(extract, args.workdir / "baseline-ingest.duckdb"),
        "dbt": dbt_baseline(warehouse, args.workdir / "baseline-dbt.duckdb", args.as_of,
                            args.timezone),  # fmt: skip
    }
    size = sum(p.stat().st_size for p in extract.glob("*.csv")) / GIB
    print(f"daily run, {extract} ({size:.2f} GiB of CSV), as of {args.as_of}, {args.timezone}")
    print(f"{'stage':12s} {'run':>9s} {'baseline':>9s} {'ratio':>7s} {'rerun':>9s}")
    for stage in [s for s, _ in STAGES] + ["other"]:
        seconds = first["stages"].get(stage, 0.0)
        rerun = again["stages"].get(stage, 0.0)
        base = baselines.get(stage)
        shown = f"{base:8.1f}s {seconds / base:6.2f}x" if base else f"{'-':>9s} {'-':>7s}"
        print(f"{stage:12s} {seconds:8.1f}s {shown} {rerun:8.1f}s")
    print(f"{'whole run':12s} {first['wall']:8.1f}s {'':>17s} {again['wall']:8.1f}s  (wall)")
    print(f"peak RSS: run {first['peak'] / GIB:.2f} GiB, rerun {again['peak'] / GIB:.2f} GiB")
    print("slowest steps of the run:")
    for step, seconds in sorted(first["steps"], key=lambda s: -s[1])[:8]:
        print(f"  {step:50s} {seconds:7.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
