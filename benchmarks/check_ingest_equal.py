"""Does this checkout's ingest load exactly what another checkout's ingest loads?

    git worktree add /tmp/reference-ingest <commit>
    flock /tmp/bench.lock .venv/bin/python benchmarks/check_ingest_equal.py \
        --extract DIR --reference /tmp/reference-ingest [--workdir /tmp/ingest-equal]

Loads the extract folder `DIR` (canonical CSV) into two fresh warehouses, one with each
checkout's `ingest.load.load_all` (each in its own process, timed), then compares every
`raw.<entity>` and `raw.<entity>__rejected` table of the two as multisets of rows: the
row counts and an order-free fingerprint (the sum of every row's hash). Tables of the
loader's own bookkeeping are not compared. Where they differ
it prints a few rows found in one and not the other. Prints both ingest times and their
ratio; exits 1 if any table differs. `--dirty` loads a damaged copy of the extract instead
(see `dirty_copy`), so that the rows polars decides, the rejected ones and the repeated
ids are compared too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ingest.entities import ENTITIES  # noqa: E402

LOAD = """
import sys
from pathlib import Path
from core.warehouse import connect
from ingest.load import load_all
with connect(sys.argv[1]) as con:
    load_all(con, Path(sys.argv[2]), "csv")
"""


def ingest(checkout: Path, extract: Path, db: Path) -> float:
    db.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOAD, str(db), str(extract)], env=env, check=True,
                   cwd=checkout)  # fmt: skip
    return time.perf_counter() - started


def dirty_copy(extract: Path, target: Path) -> Path:
    """A copy of `extract` with damage of every kind the loader decides row by row, at
    fixed lines (the same copy each time): padded values and values of another shape
    (polars decides them), bad dates (rejected), repeated ids (the earlier copy is
    replaced), quoted values with commas, quotes and line breaks, records with a field too
    many, a quote never closed, and one file with CRLF line ends."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(extract.glob("*.csv")):
        lines = path.read_bytes().split(b"\n")
        header, body = lines[0], [line for line in lines[1:] if line]
        out, repeated = [header], []
        for number, line in enumerate(body, start=2):
            fields = line.split(b",")
            if number % 101 == 0:
                repeated.append(line)  # the same id again at the end: this copy is replaced
            if number % 103 == 0:
                fields[-1] = b"  " + fields[-1] + b" "
            if number % 107 == 0 and len(fields) > 2:
                fields[2] = b"01/03/2024 09:30"
            if number % 109 == 0 and len(fields) > 1:
                fields[1] = b'"' + fields[1] + b', ""x"""'
            if number % 113 == 0 and len(fields) > 1:
                fields[-1] = b'"' + fields[-1] + b'\nmore"'
            if number % 127 == 0:
                fields.append(b"extra")
            if number == 5_000:
                fields[0] = b'"' + fields[0]  # never closed: this line alone is rejected
            out.append(b",".join(fields))
        data = b"\n".join(out + repeated) + b"\n"
        if path.name == "invoices.csv":
            data = data.replace(b"\n", b"\r\n")
        (target / path.name).write_bytes(data)
    return target


def fingerprint(con: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int]:
    columns = [r[0] for r in con.execute(f"describe {table}").fetchall()]
    listed = ", ".join(f'"{c}"' for c in columns)
    count, total = con.execute(
        f"select count(*), coalesce(sum(hash({listed})::hugeint), 0) from {table}"
    ).fetchall()[0]
    return int(count), int(total)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extract", type=Path, required=True)
    ap.add_argument("--reference", type=Path, required=True, help="the other checkout")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ingest-equal"))
    ap.add_argument("--compare-only", action="store_true",
                    help="compare the two warehouses an earlier run left in the workdir")
    ap.add_argument("--dirty", action="store_true",
                    help="load a damaged copy of the extract (written in the workdir)")
    args = ap.parse_args()
    if not (args.reference / "ingest" / "load.py").is_file():
        print(f"error: {args.reference} is not a checkout of this project", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    new_db, old_db = args.workdir / "this.duckdb", args.workdir / "reference.duckdb"
    if args.dirty and not args.compare_only:
        args.extract = dirty_copy(args.extract, args.workdir / "dirty")
        print(f"damaged copy of the extract: {args.extract}")
    if args.compare_only:
        reference_seconds = this_seconds = float("nan")
    else:
        reference_seconds = ingest(args.reference, args.extract, old_db)
        this_seconds = ingest(ROOT, args.extract, new_db)
    con = duckdb.connect(str(new_db), read_only=True)
    con.execute(f"attach '{old_db}' as reference (read_only)")
    tables = [ent.name for ent in ENTITIES] + [f"{ent.name}__rejected" for ent in ENTITIES]
    different = 0
    for table in tables:
        mine = fingerprint(con, f"raw.{table}")
        theirs = fingerprint(con, f"reference.raw.{table}")
        same = mine == theirs
        different += not same
        print(f"  raw.{table:32s} {mine[0]:>12,} rows  {'equal' if same else 'DIFFERENT'}")
        if not same:
            for a, b, label in (("", "reference.", "only here"), ("reference.", "", "only there")):
                rows = con.execute(
                    f"select * from (select * from {a}raw.{table} except all "
                    f"select * from {b}raw.{table}) limit 3"
                ).fetchall()
                for row in rows:
                    print(f"      {label}: {row}")
    print(f"ingest, this checkout:      {this_seconds:7.1f} s")
    print(f"ingest, reference checkout: {reference_seconds:7.1f} s")
    print(f"ratio this / reference:     {this_seconds / reference_seconds:7.2f}")
    print("every table equal" if not different else f"{different} tables differ")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
