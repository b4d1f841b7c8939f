"""Generate + ingest benchmark: wall time and peak memory at given patient counts.

    python benchmarks/bench_ingest.py --patients 100000,1000000 [--workdir /tmp/bench]

Each phase runs in a fresh subprocess so its peak RSS is its own. The baseline, run in
the same benchmark, is DuckDB loading the same CSV files with no parsing, validation or
lineage (`create table as select * from read_csv(...)`): the floor any loader pays.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

PHASES = {
    "generate": """
from datetime import date
from pathlib import Path
from extract.synthetic import generate_clinic
generate_clinic({n}, Path({out!r}), seed=7, fmt="csv", as_of=date(2026, 11, 26))
""",
    "ingest": """
from pathlib import Path
from ingest.load import load_all
from core.warehouse import connect
with connect({db!r}) as con:
    results = load_all(con, Path({out!r}), "csv")
print("ROWS", sum(r.rows_in for r in results.values()), sum(r.loaded for r in results.values()),
      sum(r.rejected for r in results.values()))
""",
    "baseline_duckdb_copy": """
from pathlib import Path
import duckdb
con = duckdb.connect({db!r})
for path in sorted(Path({out!r}).glob("*.csv")):
    con.execute(
        f"create or replace table {{path.stem}} as "
        f"select * from read_csv('{{path}}', all_varchar = true)"
    )
con.close()
""",
}

WRAPPER = """
import json, resource, sys, time
started = time.perf_counter()
exec(compile(sys.argv[1], "<phase>", "exec"))
print("RESULT", json.dumps({"seconds": time.perf_counter() - started,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_phase(code: str) -> tuple[float, float, str]:
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, code], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"phase failed:\n{proc.stderr[-3000:]}")
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    figures = json.loads(result.removeprefix("RESULT "))
    extra = "\n".join(line for line in proc.stdout.splitlines() if line.startswith("ROWS"))
    return figures["seconds"], figures["peak_rss_mib"], extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="100000,1000000")
    parser.add_argument("--workdir", default="/tmp/clinic-audiences-bench")
    parser.add_argument("--keep", action="store_true", help="keep the generated extract")
    args = parser.parse_args()
    work = Path(args.workdir)
    print(f"{'patients':>10} {'phase':<22} {'seconds':>9} {'peak MiB':>9}  notes")
    for n in [int(x) for x in args.patients.split(",")]:
        out = work / f"extract-{n}"
        db = work / f"warehouse-{n}.duckdb"
        base_db = work / f"baseline-{n}.duckdb"
        shutil.rmtree(out, ignore_errors=True)
        for f in (db, base_db):
            f.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        times = {}
        for phase, template in PHASES.items():
            target = base_db if phase.startswith("baseline") else db
            seconds, rss, extra = run_phase(template.format(n=n, out=str(out), db=str(target)))
            times[phase] = seconds
            size = (
                sum(p.stat().st_size for p in out.glob("*.csv")) / 2**20
                if phase == "generate"
                else 0
            )
            note = (
                f"{size:,.0f} MiB of CSV"
                if size
                else extra.replace("ROWS", "rows in/loaded/rejected:")
            )
            print(f"{n:>10,} {phase:<22} {seconds:>9.1f} {rss:>9,.0f}  {note}", flush=True)
        ratio = times["ingest"] / times["baseline_duckdb_copy"]
        print(f"{n:>10,} {'ingest / baseline':<22} {ratio:>9.2f}x")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
            for f in (db, base_db):
                f.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
