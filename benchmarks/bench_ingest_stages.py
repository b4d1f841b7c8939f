"""Where one entity's ingest spends its time, stage by stage, against DuckDB's own reader.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_ingest_stages.py \
        --extract DIR --entity appointments [--workdir /tmp/ingest-stages]

Stages `DIR/<entity>.csv` as a pipeline run does (`ingest.load.stage_entity`: scan the
layout, read the file with DuckDB typing the plain text in SQL, number the lines, find
repeated ids, decide the other rows in polars), timing each stage, then, in the same
process, the baseline: DuckDB reading the same file into a table of the contract's column
types (`read_csv`, no lineage, no checks, bad values skipped). Prints each stage's seconds
and share, the total, the baseline and their ratio, and the rows loaded and rejected. Run
it twice: the first read of a large file may come from disk rather than the page cache.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

import ingest.csv_reader as csv_reader  # noqa: E402
import ingest.load as load  # noqa: E402
from ingest.entities import entity  # noqa: E402
from ingest.raw_tables import DUCKDB_TYPES, create_empty_raw_tables  # noqa: E402

SPENT: dict[str, float] = collections.defaultdict(float)
# The layout is scanned on a thread while DuckDB reads the file: its time overlaps.
SCAN = "scan the layout (numpy, beside the reading)"


def timed(name: str, fn: Callable) -> Callable:
    def run(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - started

    return run


def timed_iterator(name: str, fn: Callable) -> Callable:
    def run(*args, **kwargs):
        it = fn(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                SPENT[name] += time.perf_counter() - started
            yield item

    return run


def instrument() -> None:
    csv_reader.scan_layout = timed(SCAN, csv_reader.scan_layout)
    load.CsvRows.write = timed("read, type in SQL and write (DuckDB)", load.CsvRows.write)
    load.CsvRows.number_lines = timed("number the lines", load.CsvRows.number_lines)
    load.CsvRows.earlier_copies = timed("find repeated ids", load.CsvRows.earlier_copies)
    load.CsvRows.left_for_polars = timed("find the rows left for polars",
                                         load.CsvRows.left_for_polars)  # fmt: skip
    load.CsvRows.text_batches = timed_iterator("read their text back",
                                               load.CsvRows.text_batches)  # fmt: skip
    load.process_batch = timed("type and validate them (polars)", load.process_batch)
    load.RawWriter.add = timed("write polars' rows", load.RawWriter.add)
    load.CsvRows.settle = timed("settle the side table", load.CsvRows.settle)


def baseline_seconds(con: duckdb.DuckDBPyConnection, path: Path, name: str) -> float:
    """DuckDB's own reader loading the file into a table of the contract's column types:
    no line numbers, no reasons, bad values skipped."""
    declared = {c.name: DUCKDB_TYPES[c.kind] for c in entity(name).columns}
    header = csv_reader.read_header(path)
    columns = {h: declared.get(h.strip().lower(), "VARCHAR") for h in header}
    started = time.perf_counter()
    con.execute(
        "create or replace table baseline as select * from read_csv(?, header = true, "
        "columns = ?, ignore_errors = true)",
        [str(path), columns],
    )
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extract", type=Path, required=True)
    ap.add_argument("--entity", default="appointments")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ingest-stages"))
    args = ap.parse_args()
    path = args.extract / f"{args.entity}.csv"
    if not path.is_file():
        print(f"error: {path} does not exist", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    db = args.workdir / "stages.duckdb"
    db.unlink(missing_ok=True)
    instrument()
    con = duckdb.connect(str(db))
    create_empty_raw_tables(con)
    started = time.perf_counter()
    counts = load.stage_entity(con, args.entity, args.extract)
    total = time.perf_counter() - started
    baseline = baseline_seconds(con, path, args.entity)
    con.close()
    print(f"{args.entity}: {counts.rows_in:,} rows in, {counts.loaded:,} loaded, "
          f"{counts.rejected:,} rejected ({path.stat().st_size / 2**30:.2f} GiB)")  # fmt: skip
    for name, seconds in sorted(SPENT.items(), key=lambda kv: -kv[1]):
        print(f"  {name:34s} {seconds:7.1f} s  {seconds / total:6.1%}")
    in_turn = sum(seconds for name, seconds in SPENT.items() if name != SCAN)
    print(f"  {'other':34s} {total - in_turn:7.1f} s")
    print(f"total ingest:                     {total:7.1f} s")
    print(f"baseline, DuckDB read_csv into the same column types: {baseline:7.1f} s")
    print(f"ratio ingest / baseline:          {total / baseline:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
