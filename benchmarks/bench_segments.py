"""Segment evaluation speed against hand-written DuckDB SQL, in one process.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_segments.py --duckdb PATH \
        [--as-of YYYY-MM-DD] [--repeat 5]

PATH is a warehouse built by the pipeline (e.g. from `audiences generate --patients
1000000`). The script times, warm and as the median of --repeat runs:
  * `preview` (count + 10 sample rows) of an attribute-only segment (the shipped
    lapsed-physio-6-12mo) and of an events segment (>= 3 attended physio visits in the
    last 12 months, over every appointment);
  * the whole shipped library;
and the same segments written by hand as DuckDB SQL, run on the same file in the same
process (for previews, the SQL side also fetches the 10 sample rows with the same
columns). Member counts of both must agree (else the script says MISMATCH and exits 1).
Goals: attribute-only < 50 ms, events < 500 ms, library < 5 s, never slower than SQL.
The one-off load of the marts into memory is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segments.dates import resolve_date  # noqa: E402
from segments.evaluate import WarehouseFrames, evaluate  # noqa: E402
from segments.field_catalogue import ENTITY_TABLES  # noqa: E402
from segments.library import (  # noqa: E402
    SHIPPED_DEFINITIONS,
    default_catalogue,
    preview,
    preview_columns,
)
from segments.validation import Segment, load_segments, parse_definition, read_yaml  # noqa: E402

EVENTS_SEGMENT = """
name: Three or more physio visits in 12 months
include:
  match: all
  conditions:
    - {field: status, op: eq, value: active}
    - events: appointments
      where:
        match: all
        conditions:
          - {field: category, op: eq, value: Physio}
          - {field: status, op: eq, value: attended}
      within: {from: "-12 months", to: today}
      count: {op: gte, value: 3}
"""

NOT_BOOKED = "next_appointment_at is null"

# The shipped library (and the events benchmark segment) by hand, as an analyst would
# write them. $-parameters are dates relative to the as-of date.
HAND_SQL: dict[str, str] = {
    "events-physio-3-in-12mo": """
        select p.patient_id from marts.patient_features p
        join (select patient_id from marts.appointments
              where category = 'Physio' and status = 'attended'
                and start_date between $m12 and $today
              group by patient_id having count(*) >= 3) e using (patient_id)
        where p.status = 'active'""",
    "lapsed-physio-6-12mo": f"""
        select patient_id from marts.patient_features
        where last_appointment_category = 'Physio' and last_visit_date between $m12 and $m6
          and status = 'active' and {NOT_BOOKED}""",
    "dormant-24mo": f"""
        select patient_id from marts.patient_features
        where last_visit_date <= $m24 and status <> 'archived' and {NOT_BOOKED}""",
    "high-value-not-rebooked-90d": f"""
        select patient_id from marts.patient_features
        where lifetime_value > 1000 and last_visit_date < $d90 and {NOT_BOOKED}
          and status = 'active'""",
    "orphaned-patients": f"""
        select patient_id from marts.patient_features
        where last_practitioner_active = false and status = 'active'
          and last_visit_date >= $m24 and {NOT_BOOKED}""",
    "overdue-against-cadence": f"""
        select patient_id from marts.patient_features
        where cadence_overdue_ratio >= 2 and total_visits >= 3 and status = 'active'
          and {NOT_BOOKED}""",
    "birthdays-next-7-days": """
        select patient_id from marts.patient_features
        where days_until_birthday between 0 and 7 and has_email and email_opted_out = false
          and status in ('active', 'inactive')""",
    "invoices-outstanding-30d": """
        select patient_id from marts.patient_features
        where balance_due > 0 and oldest_open_invoice_days > 30""",
    "leads-not-scheduled": """
        select p.patient_id from marts.patient_features p
        where p.lead_status in ('new', 'contacted')
          and not exists (select 1 from marts.appointments a where a.patient_id = p.patient_id
                          and a.status in ('attended', 'dna', 'upcoming'))""",
    "seminar-attendees-never-booked": """
        select p.patient_id from marts.patient_features p
        where (contains(lower(p.referral_source), 'seminar')
               or exists (select 1 from marts.leads l where l.patient_id = p.patient_id
                          and (contains(lower(l.source), 'seminar')
                               or contains(lower(l.campaign_name), 'seminar'))))
          and not exists (select 1 from marts.appointments a where a.patient_id = p.patient_id
                          and a.status <> 'cancelled')""",
    "surgery-pre-op-14d": """
        select p.patient_id from marts.patient_features p
        where exists (select 1 from marts.appointments a where a.patient_id = p.patient_id
                      and a.category = 'Surgery' and a.status = 'upcoming'
                      and a.start_date between $today and $p14)""",
    "waitlist": "select patient_id from marts.patient_features where on_waitlist",
    "referral-cases-expiring-30d": """
        select case_id from marts.case_features
        where status = 'open' and referral_type is not null
          and expiry_date between $today and $p30
          and (sessions_left > 0 or max_sessions is null)""",
    "cases-last-session": """
        select case_id from marts.case_features where status = 'open' and sessions_left <= 1""",
    "cases-80pct-invoiced": """
        select case_id from marts.case_features where status = 'open' and pct_invoiced >= 80""",
    "new-patients-not-rebooked-21d": f"""
        select patient_id from marts.patient_features
        where total_visits = 1 and first_visit_date < $d21 and first_visit_date >= $d90
          and {NOT_BOOKED}""",
    "practitioner-own-physio-pipeline": f"""
        select p.patient_id from marts.patient_features p
        join (select patient_id from marts.appointments
              where practitioner_id = '1' and category = 'Physio' and status = 'attended'
                and start_date between $m12 and $today
              group by patient_id having count(*) >= 3) e using (patient_id)
        where p.last_practitioner_id = '1' and p.{NOT_BOOKED}""",
}

OFFSETS = {
    "today": "today", "m6": "-6 months", "m12": "-12 months", "m24": "-24 months",
    "d90": "-90 days", "d21": "-21 days", "p14": "+14 days", "p30": "+30 days",
}  # fmt: skip


def sql_params(sql: str, as_of: date) -> dict[str, date]:
    return {k: resolve_date(v, as_of) for k, v in OFFSETS.items() if f"${k}" in sql}


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median seconds over `repeat` runs after one warm-up run, and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def run_sql(con: duckdb.DuckDBPyConnection, sql: str, as_of: date) -> int:
    """The hand-written query, its members fetched into polars (like the evaluation)."""
    return con.sql(sql, params=sql_params(sql, as_of)).pl().height


def run_sql_preview(
    con: duckdb.DuckDBPyConnection, sql: str, as_of: date, table: str, columns: list[str]
) -> int:
    """What a preview shows, by hand: the count, and 10 members with their columns."""
    members = con.sql(sql, params=sql_params(sql, as_of)).pl()
    key = members.columns[0]
    select = ", ".join([key, *columns])
    con.sql(
        f"select {select} from marts.{table} where {key} in (select unnest($ids))",
        params={"ids": members[key].head(10).to_list()},
    ).pl()
    return members.height


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duckdb", required=True, help="warehouse file with the marts")
    parser.add_argument("--as-of", help="YYYY-MM-DD (default: the latest appointment date)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--timezone", default="UTC")
    args = parser.parse_args()

    db = Path(args.duckdb)
    con = duckdb.connect(str(db), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    n_patients = con.execute("select count(*) from marts.patient_features").fetchall()[0][0]
    n_appts = con.execute("select count(*) from marts.appointments").fetchall()[0][0]
    if args.as_of:
        as_of = date.fromisoformat(args.as_of)
    else:
        # Extracts are generated up to their as-of date; future appointments go beyond it.
        as_of = con.execute(
            "select max(start_date) from marts.appointments where status <> 'upcoming'"
        ).fetchall()[0][0]
    print(f"warehouse {db}: {n_patients:,} patients, {n_appts:,} appointments; as of {as_of}")

    catalogue = default_catalogue(db)
    library = load_segments([SHIPPED_DEFINITIONS], catalogue)
    events_def = parse_definition(read_yaml(EVENTS_SEGMENT, "events"), "events", catalogue)
    events_seg = Segment("events-physio-3-in-12mo", Path("<inline>"), events_def)
    by_slug = {s.slug: s for s in library}

    frames = WarehouseFrames(db)
    started = time.perf_counter()
    frames.prepare([s.definition for s in [*library, events_seg]])
    load_s = time.perf_counter() - started
    print(f"load the marts' needed columns into memory (once per process): {load_s:.2f} s\n")

    tz = args.timezone
    rows: list[tuple[str, int, int, float, float]] = []
    failed = False

    def bench(label: str, seg: Segment, as_preview: bool) -> tuple[float, float]:
        nonlocal failed
        if as_preview:
            ours_s, res = timed(lambda: preview(seg, frames, catalogue, as_of, tz), args.repeat)
            ours_n = res.count  # type: ignore[attr-defined]
        else:
            ours_s, res = timed(
                lambda: evaluate(seg.definition, frames, catalogue, as_of, tz), args.repeat
            )
            ours_n = res.height  # type: ignore[attr-defined]
        sql = HAND_SQL[seg.slug]
        if as_preview:
            table, cols = ENTITY_TABLES[seg.definition.entity], preview_columns(seg, catalogue)
            sql_s, sql_n = timed(lambda: run_sql_preview(con, sql, as_of, table, cols), args.repeat)
        else:
            sql_s, sql_n = timed(lambda: run_sql(con, sql, as_of), args.repeat)
        if ours_n != sql_n:
            failed = True
        rows.append((label, ours_n, sql_n, ours_s, sql_s))  # type: ignore[arg-type]
        return ours_s, sql_s

    attr = bench(
        "preview attribute-only (lapsed-physio-6-12mo)", by_slug["lapsed-physio-6-12mo"], True
    )
    events = bench("preview events (>=3 physio in 12 months)", events_seg, True)
    lib_ours = lib_sql = 0.0
    for seg in library:
        o, s = bench(f"  library: {seg.slug}", seg, False)
        lib_ours += o
        lib_sql += s

    print(
        f"{'segment':<52} {'members':>9} {'sql n':>9} {'polars ms':>10} {'sql ms':>9} {'ratio':>6}"
    )
    for label, n, sn, o, s in rows:
        flag = "" if n == sn else "  MISMATCH"
        print(
            f"{label:<52} {n:>9,} {sn:>9,} {o * 1000:>10.1f} {s * 1000:>9.1f} {o / s:>6.2f}{flag}"
        )
    print(
        f"{'whole library (' + str(len(library)) + ' segments, sum of medians)':<72}"
        f"{lib_ours * 1000:>10.1f} {lib_sql * 1000:>9.1f} {lib_ours / lib_sql:>6.2f}"
    )
    print("\ngoals: attribute-only < 50 ms, events < 500 ms, library < 5000 ms, ratio <= 1.00")
    print(
        f"  attribute-only {attr[0] * 1000:.1f} ms ({'met' if attr[0] < 0.05 else 'MISSED'}), "
        f"events {events[0] * 1000:.1f} ms ({'met' if events[0] < 0.5 else 'MISSED'}), "
        f"library {lib_ours * 1000:.0f} ms ({'met' if lib_ours < 5 else 'MISSED'})"
    )
    con.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
