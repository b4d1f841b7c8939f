"""A work list's sync at scale: the first sync of a large list, and its resync on the
same day, against a set-based insert of the same rows.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_worklists.py \
        --warehouse W.duckdb --as-of 2026-06-30 [--worklist SLUG] [--timezone TZ] \
        [--postgres URL] [--profile]

The warehouse must hold the segment's membership for the day (an `audiences run` of that
day). Each store starts empty: a fresh SQLite file, and, with `--postgres`, a fresh
database on that server (created and dropped by the benchmark). Then, per store:

  * first sync   - `materialize_worklist` (what the work-list asset runs) on the empty
                   store: every member enters the first stage, one event each;
  * resync       - the same call again (the rerun of a day: nothing changes);
  * baseline     - into another empty store, the same member and event rows, already
                   built, inserted with one executemany per table in one transaction.

The default work list is the one over the largest segment of the day.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from workflow.api import SYSTEM_ACTOR, _event_row  # noqa: E402
from workflow.run import materialize_worklist  # noqa: E402
from workflow.store import events, members, open_state  # noqa: E402
from workflow.warehouse_reads import read_segment_members  # noqa: E402
from workflow.worklist_files import load_worklists  # noqa: E402


def largest(worklists: dict, warehouse: Path, as_of: date) -> str:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        sizes = dict(con.execute(
            "select segment_slug, count(*) from segments.membership where as_of = ? "
            "group by 1", [as_of]).fetchall())  # fmt: skip
    return max(worklists, key=lambda slug: sizes.get(worklists[slug].segment_slug, 0))


def baseline(url: str, info, rows) -> float:  # noqa: ANN001
    """One executemany per table, in one transaction, of rows built beforehand."""
    at = datetime.now(UTC)
    first, assignee = info.spec.first_stage, info.spec.default_assignee
    member_rows = [
        {"worklist_slug": info.slug, "member_id": m.member_id, "patient_id": m.patient_id,
         "case_id": m.case_id, "stage": first, "assignee": assignee, "entered_at": at,
         "stage_since": at, "left_segment": False, "version": 1}
        for m in rows
    ]  # fmt: skip
    event_rows = [
        _event_row(info.slug, m.member_id, 1, at, SYSTEM_ACTOR, "entered", to_stage=first,
                   assignee=assignee)
        for m in rows
    ]  # fmt: skip
    engine = open_state(url)
    try:
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(members.insert(), member_rows)
            conn.execute(events.insert(), event_rows)
        return time.perf_counter() - started
    finally:
        engine.dispose()


def timed_sync(info, warehouse: Path, url: str, as_of: date, tz: str, profile: bool) -> float:  # noqa: ANN001
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    materialize_worklist(info, warehouse, url, tz, as_of)
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumtime").print_stats(25)
    return time.perf_counter() - started


def fresh_postgres(server: str) -> tuple[str, object]:
    name = f"bench_worklists_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    url = sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()

    return url, drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", type=Path, required=True)
    parser.add_argument("--as-of", required=True)
    parser.add_argument("--worklist")
    parser.add_argument("--timezone", default="Australia/Sydney")
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a database is created)")
    parser.add_argument("--profile", action="store_true", help="print the first sync's profile")
    args = parser.parse_args()
    as_of = date.fromisoformat(args.as_of)

    worklists = load_worklists()
    slug = args.worklist or largest(worklists, args.warehouse, as_of)
    info = worklists[slug]
    rows = read_segment_members(args.warehouse, info.segment_slug, info.entity, as_of)
    print(f"work list {slug} over segment {info.segment_slug}: {len(rows):,} members "
          f"as of {as_of}; on_booking={info.spec.on_booking}")  # fmt: skip

    stores: list[tuple[str, object]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-worklists-"))
    print(f"{'store':<12} {'first sync':>11} {'resync':>9} {'baseline':>9} {'ratio':>6}")
    for kind in ["sqlite"] + (["postgres"] if args.postgres else []):
        if kind == "sqlite":
            sync_url, base_url = f"sqlite:///{tmp / 'sync.db'}", f"sqlite:///{tmp / 'base.db'}"
            cleanup = []
        else:
            sync_url, drop_sync = fresh_postgres(args.postgres)
            base_url, drop_base = fresh_postgres(args.postgres)
            cleanup = [drop_sync, drop_base]
        try:
            first = timed_sync(info, args.warehouse, sync_url, as_of, args.timezone, args.profile)
            again = timed_sync(info, args.warehouse, sync_url, as_of, args.timezone, False)
            base = baseline(base_url, info, rows)
            print(f"{kind:<12} {first:>10.2f}s {again:>8.2f}s {base:>8.2f}s "
                  f"{first / base:>5.2f}x")  # fmt: skip
            stores.append((kind, first))
        finally:
            for drop in cleanup:
                drop()
    print("\ngoal: the largest work list's sync <= 5 s on SQLite and on PostgreSQL")
    for kind, first in stores:
        print(f"  {kind}: {first:.2f} s ({'met' if first <= 5 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
