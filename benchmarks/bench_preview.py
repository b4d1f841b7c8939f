"""A cold `audiences preview`: the wall time of the whole command, in a new process each time.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_preview.py \
        --duckdb WAREHOUSE [--repeat 7] [--as-of 2026-06-30] [SEGMENT.yaml ...]

WAREHOUSE is one the pipeline built (e.g. `audiences run` on a 100k-patient extract).
Each definition (default: an attribute segment, `dormant-24mo`, and one with events
conditions, `seminar-attendees-never-booked`) is previewed --repeat times, the
definitions taken in turns so that a machine that slows down weighs on all alike; the
median and the fastest wall times are printed. The baseline is the same process start
doing no work (`python -c pass`) and one importing what a preview imports (polars,
duckdb, pydantic and the segment models): a preview can be no faster than those.

Python is run as a user runs it, writing and reading its bytecode caches (an environment
with PYTHONDONTWRITEBYTECODE set compiles every module of the package on every start).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["segments/definitions/dormant-24mo.yaml",
           "segments/definitions/seminar-attendees-never-booked.yaml"]  # fmt: skip
IMPORTS = "import polars, duckdb, pydantic; import segments.evaluate, segments.library"


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duckdb", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--as-of", default="2026-06-30")
    ap.add_argument("--timezone", default="Australia/Sydney")
    ap.add_argument("definitions", nargs="*", default=DEFAULT)
    args = ap.parse_args()
    if not args.duckdb.exists():
        print(f"error: {args.duckdb} does not exist; build one with `audiences run`")
        return 2
    env = {**os.environ, "DUCKDB_PATH": str(args.duckdb), "CLINIC_TIMEZONE": args.timezone}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    python = sys.executable
    audiences = str(Path(python).parent / "audiences")
    commands = {
        "python start (baseline)": [python, "-c", "pass"],
        "imports of a preview (baseline)": [python, "-c", IMPORTS],
        **{Path(d).stem: [audiences, "preview", d, "--as-of", args.as_of]
           for d in args.definitions},
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():
        wall(command, env)  # writes the bytecode caches, reads the file into the OS cache
    for _ in range(args.repeat):
        for name, command in commands.items():
            times[name].append(wall(command, env))
    print(f"cold preview, {args.duckdb}, as of {args.as_of}, {args.repeat} runs each")
    print(f"{'':34s} {'median':>8s} {'fastest':>8s}")
    for name, seconds in times.items():
        print(f"{name:34s} {statistics.median(seconds):7.2f}s {min(seconds):7.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
