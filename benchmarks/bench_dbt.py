"""`dbt build` of the feature warehouse against one hand-written DuckDB query, same run.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_dbt.py --patients 100000 1000000
    .venv/bin/python benchmarks/bench_dbt.py --raw-from var/warehouse.duckdb

For each size the script needs a raw warehouse: `--raw-from FILE` reuses one (its `raw`
schema is copied), otherwise the synthetic generator writes a CSV extract and the ingest
loads it (cached under benchmarks/out/dbt/ and reused by later runs; preparation is
reported but not part of the comparison). Then, each on a fresh copy of that raw file
and each in its own process (wall time and peak RSS of that process and its children),
alternating `--repeat` times (default 3; medians and every ratio are printed):

  * dbt build      - every model and data test, as the Dagster asset runs it (unit tests
                     excluded; `--with-unit-tests` also times a plain `dbt build`);
  * single query   - the same patient_features computed by one hand-written SQL
                     statement (CREATE TABLE AS, CTEs only), the baseline.

Both use the profile's DuckDB settings (threads 2, memory_limit $DUCKDB_MEMORY_LIMIT or
2GB). The baseline's rows must equal marts.patient_features exactly (EXCEPT ALL both
ways), else the script says MISMATCH and exits 1. Goal at 1M patients: dbt build within
2x of the single query and under 8 GiB peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DBT_PROJECT_DIR = ROOT / "dbt_project"
OUT_DIR = ROOT / "benchmarks" / "out" / "dbt"
GIB = 1024**3

# Runs a command and prints the peak RSS (KiB on Linux) of everything it started.
MEASURE_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr)\n"
    "sys.exit(code)\n"
)

BASELINE_SQL = """
create or replace table bench.baseline_patient_features as
with appointments as (
    select
        a.appointment_id, a.patient_id, a.practitioner_id, a.starts_at,
        cast(timezone($tz, a.starts_at) as date) as start_date,
        case
            when a.cancelled_at is not null then 'cancelled'
            when a.did_not_arrive then 'dna'
            when cast(timezone($tz, a.starts_at) as date) < $d then 'attended'
            else 'upcoming'
        end as class,
        t.name as type_name,
        t.category
    from raw.appointments a
    left join raw.appointment_types t on t.appointment_type_id = a.appointment_type_id
),
visit_dates as (
    select distinct patient_id, start_date from appointments where class = 'attended'
),
ranked_dates as (
    select
        patient_id,
        row_number() over w_desc as r,
        start_date - lag(start_date) over w_asc as gap
    from visit_dates
    window w_desc as (partition by patient_id order by start_date desc),
           w_asc as (partition by patient_id order by start_date)
),
cadence as (
    select patient_id,
        if(count(*) >= 3, median(gap::double) filter (where r <= 5), null) as cadence_days
    from ranked_dates where r <= 6 group by patient_id
),
visits as (
    select
        patient_id,
        min(start_date) filter (where class = 'attended') as first_visit_date,
        max(start_date) filter (where class = 'attended') as last_visit_date,
        count(*) filter (where class = 'attended') as total_visits,
        count(*) filter (where class = 'attended' and start_date >= $d - 365) as visits_last_365d,
        count(*) filter (where class = 'dna') as dna_count,
        count(*) filter (where class = 'cancelled') as cancellation_count,
        min(starts_at) filter (where class = 'upcoming') as next_appointment_at,
        list_sort(list_distinct(list(category) filter (where class = 'attended'))) as cats,
        arg_max_null({'p': practitioner_id, 't': type_name, 'c': category},
            (starts_at, appointment_id)) filter (where class = 'attended') as last_attended
    from appointments group by patient_id
),
invoices as (
    select patient_id,
        sum(total_amount) filter (where coalesce(status, 'open') <> 'void') as ltv,
        sum(case coalesce(status, 'open')
                when 'paid' then total_amount when 'closed' then total_amount
                when 'open' then coalesce(amount_paid, 0) else 0 end) as paid,
        sum(total_amount - coalesce(amount_paid, 0))
            filter (where coalesce(status, 'open') = 'open') as due,
        max($d - issue_date) filter (
            where coalesce(status, 'open') = 'open' and total_amount - coalesce(amount_paid, 0) > 0
        ) as oldest
    from raw.invoices group by patient_id
),
open_cases as (
    select patient_id, count(*) as n from raw.cases
    where not coalesce(closed, false)
      and (closed_at is null or cast(timezone($tz, closed_at) as date) > $d)
    group by patient_id
),
latest_lead as (
    select * from raw.leads
    qualify row_number() over (
        partition by patient_id order by created_at desc nulls last, lead_id desc) = 1
),
waiting as (
    select distinct patient_id from raw.waitlist
    where removed_at is null or cast(timezone($tz, removed_at) as date) > $d
),
codes as (
    select patient_id, list_sort(list_distinct(list(code))) as codes
    from raw.diagnoses group by patient_id
),
opt as (
    select patient_id,
        bool_or(channel in ('email', 'all')) as email, bool_or(channel in ('sms', 'all')) as sms
    from raw.opt_outs
    where opted_out_at is null or cast(timezone($tz, opted_out_at) as date) <= $d
    group by patient_id
),
people as (
    select p.*,
        if(p.date_of_birth <= $d, p.date_of_birth, null) as dob,
        year($d) as y,
        (y % 4 = 0 and y % 100 <> 0) or y % 400 = 0 as leap_now,
        ((y + 1) % 4 = 0 and (y + 1) % 100 <> 0) or (y + 1) % 400 = 0 as leap_next,
        make_date(y, month(dob),
            if(month(dob) = 2 and day(dob) = 29 and not leap_now, 28, day(dob))) as bday_now,
        make_date(y + 1, month(dob),
            if(month(dob) = 2 and day(dob) = 29 and not leap_next, 28, day(dob))) as bday_next,
        length(regexp_replace(coalesce(p.mobile, ''), '[^0-9]', '', 'g')) >= 8 as mobile_ok
    from raw.patients p
)
select
    p.patient_id, p.first_name, p.last_name, p.sex, p.status, p.state, p.post_code, p.city,
    p.country, p.referral_source, p.referring_provider, p.insurance_plan, p.latitude,
    p.longitude, p.created_at,
    y - year(p.dob) - if(p.bday_now > $d, 1, 0) as age,
    p.date_of_birth,
    if(p.bday_now >= $d, p.bday_now - $d, p.bday_next - $d) as days_until_birthday,
    p.email, p.mobile,
    coalesce(regexp_full_match(trim(p.email), '[^@\\s]+@[^@\\s]+\\.[^@\\s]+'), false) as has_email,
    p.mobile_ok as has_mobile,
    coalesce(p.has_whatsapp, false) and p.mobile_ok as has_whatsapp,
    coalesce(opt.email, false) or p.accepted_email_marketing is not distinct from false
        as email_opted_out,
    coalesce(opt.sms, false) or p.accepted_sms_marketing is not distinct from false
        as sms_opted_out,
    v.first_visit_date, v.last_visit_date,
    $d - v.last_visit_date as days_since_last_visit,
    v.next_appointment_at,
    coalesce(v.total_visits, 0) as total_visits,
    coalesce(v.visits_last_365d, 0) as visits_last_365d,
    coalesce(v.dna_count, 0) as dna_count,
    coalesce(v.cancellation_count, 0) as cancellation_count,
    c.cadence_days,
    ($d - v.last_visit_date) / c.cadence_days as cadence_overdue_ratio,
    v.last_attended.p as last_practitioner_id,
    nullif(trim(concat_ws(' ', pr.first_name, pr.last_name)), '') as last_practitioner_name,
    case
        when v.last_attended.p is null then null
        when pr.practitioner_id is null then false
        when cast(timezone($tz, pr.left_at) as date) <= $d then false
        else coalesce(pr.active, true)
    end as last_practitioner_active,
    v.last_attended.t as last_appointment_type, v.last_attended.c as last_appointment_category,
    coalesce(v.cats, []::varchar[]) as appointment_categories_attended,
    coalesce(i.ltv, 0)::decimal(18, 2) as lifetime_value,
    coalesce(i.paid, 0)::decimal(18, 2) as total_paid,
    coalesce(i.due, 0)::decimal(18, 2) as balance_due,
    if(v.total_visits > 0, (coalesce(i.ltv, 0) / v.total_visits)::decimal(18, 2), null)
        as avg_visit_fee,
    i.oldest as oldest_open_invoice_days,
    coalesce(oc.n, 0) as open_case_count,
    l.status as lead_status, l.campaign_name as lead_campaign,
    cast(timezone($tz, l.created_at) as date) as lead_created_date,
    l.owner as lead_owner, l.procedure_of_interest,
    w.patient_id is not null as on_waitlist,
    coalesce(codes.codes, []::varchar[]) as diagnosis_codes
from people p
left join visits v on v.patient_id = p.patient_id
left join cadence c on c.patient_id = p.patient_id
left join raw.practitioners pr on pr.practitioner_id = v.last_attended.p
left join invoices i on i.patient_id = p.patient_id
left join open_cases oc on oc.patient_id = p.patient_id
left join latest_lead l on l.patient_id = p.patient_id
left join waiting w on w.patient_id = p.patient_id
left join codes on codes.patient_id = p.patient_id
left join opt on opt.patient_id = p.patient_id
"""

# Runs the baseline in its own process with the profile's settings.
BASELINE_RUNNER = """
import sys, duckdb, time
path, sql, as_of, tz, memory = sys.argv[1:6]
con = duckdb.connect(path, config={"threads": 2, "memory_limit": memory})
con.execute("set TimeZone = 'UTC'")
con.execute("create schema if not exists bench")
started = time.perf_counter()
con.execute(sql.replace("$tz", "'" + tz + "'").replace("$d", "date '" + as_of + "'"))
print("QUERY_SECONDS", time.perf_counter() - started, file=sys.stderr)
con.close()
"""


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_bytes: int
    output: str


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> Measured:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", MEASURE_WRAPPER, *cmd],
        env=env, cwd=cwd, capture_output=True, text=True, check=False,
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(
            f"command failed ({completed.returncode}): {' '.join(cmd[:3])} ...\n"
            f"{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
        )
    peak_kib = int(completed.stderr.split("PEAK_RSS_KIB")[-1].split()[0])
    return Measured(seconds, peak_kib * 1024, completed.stdout + completed.stderr)


def prepare_raw(patients: int, as_of: date, seed: int, raw_from: Path | None) -> Path:
    """A DuckDB file holding the raw schema for this size (cached between runs)."""
    if raw_from is not None:
        if not raw_from.exists():
            raise SystemExit(f"--raw-from {raw_from}: no such file")
        return raw_from
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    raw = OUT_DIR / f"raw_{patients}_{as_of}_{seed}.duckdb"
    if raw.exists():
        print(f"  reusing {raw.relative_to(ROOT)}")
        return raw
    from core.warehouse import connect
    from extract.synthetic import generate_clinic
    from ingest.load import load_all

    extract = OUT_DIR / f"extract_{patients}_{as_of}_{seed}"
    started = time.perf_counter()
    if not (extract / "patients.csv").exists():
        generate_clinic(patients, extract, seed=seed, fmt="csv", as_of=as_of)
    generated = time.perf_counter()
    partial = raw.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with connect(partial) as con:
        results = load_all(con, extract, "csv")
    partial.rename(raw)
    loaded = {name: r.loaded for name, r in results.items()} if results else {}
    print(
        f"  prepared raw warehouse: generate {generated - started:.1f}s, "
        f"ingest {time.perf_counter() - generated:.1f}s, rows {loaded}"
    )
    return raw


def median_run(runs: list[Measured]) -> Measured:
    """The middle run by wall time (the lower middle for an even count)."""
    return sorted(runs, key=lambda m: m.seconds)[(len(runs) - 1) // 2]


def fresh_copy(raw: Path, work: Path) -> Path:
    work.parent.mkdir(parents=True, exist_ok=True)
    work.unlink(missing_ok=True)
    Path(str(work) + ".wal").unlink(missing_ok=True)
    shutil.copyfile(raw, work)
    return work


def dbt_command(
    target: Path, as_of: date, tz: str, unit_tests: bool, threads: int | None = None
) -> list[str]:
    dbt = Path(sys.executable).parent / "dbt"
    # Without unit tests: what the Dagster asset runs (PIPELINE_BUILD_ARGS).
    build = ["build"] if unit_tests else ["build", "--exclude-resource-type", "unit_test"]
    if threads is not None:
        build += ["--threads", str(threads)]
    return [
        str(dbt) if dbt.exists() else "dbt", *build,
        "--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR),
        "--target-path", str(target / "target"), "--log-path", str(target / "logs"),
        "--vars", json.dumps({"as_of": as_of.isoformat(), "clinic_timezone": tz}),
    ]


def slowest_nodes(target: Path, count: int = 6) -> list[tuple[str, float]]:
    results = json.loads((target / "target" / "run_results.json").read_text())["results"]
    timed = [(r["unique_id"].split(".", 2)[-1], r["execution_time"]) for r in results]
    return sorted(timed, key=lambda t: -t[1])[:count]


def compare(dbt_file: Path, baseline_file: Path) -> tuple[int, int, int]:
    con = duckdb.connect(str(dbt_file), read_only=True)
    try:
        con.execute(f"attach '{baseline_file}' as base (read_only)")
        # The columns both hold: the query leaves out the patient's custom fields, which
        # the model passes through from the raw table as they are.
        base_columns = set(
            con.sql("select * from base.bench.baseline_patient_features limit 0").columns
        )
        columns = ", ".join(
            f'"{c}"' for c in con.sql("select * from marts.patient_features limit 0").columns
            if c in base_columns
        )
        dbt_rows = con.sql("select count(*) from marts.patient_features").fetchall()[0][0]
        only_dbt = con.sql(
            f"select count(*) from (select {columns} from marts.patient_features "
            f"except all select {columns} from base.bench.baseline_patient_features)"
        ).fetchall()[0][0]
        only_base = con.sql(
            f"select count(*) from (select {columns} from base.bench.baseline_patient_features "
            f"except all select {columns} from marts.patient_features)"
        ).fetchall()[0][0]
    finally:
        con.close()
    return dbt_rows, only_dbt, only_base


def bench_size(patients: int | None, args: argparse.Namespace) -> bool:
    label = f"{patients:,} patients" if patients else f"raw from {args.raw_from}"
    print(f"\n== {label} (as_of {args.as_of}, {args.timezone}, memory_limit {args.memory}) ==")
    raw = prepare_raw(patients or 0, args.as_of, args.seed, args.raw_from)
    with duckdb.connect(str(raw), read_only=True) as con:
        counts = {
            t: con.sql(f"select count(*) from raw.{t}").fetchall()[0][0]
            for t in ("patients", "appointments", "invoices")
        }
    print(f"  raw rows: {counts}")
    tag = patients or "raw_from"
    env = {
        **os.environ, "DUCKDB_MEMORY_LIMIT": args.memory, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }

    dbt_file = fresh_copy(raw, OUT_DIR / f"work_dbt_{tag}.duckdb")
    target = OUT_DIR / f"dbt_target_{tag}"
    shutil.rmtree(target, ignore_errors=True)
    dbt_env = {**env, "DUCKDB_PATH": str(dbt_file)}
    base_file = OUT_DIR / f"work_baseline_{tag}.duckdb"
    # dbt and the baseline alternate, so a burst of load on the shared machine hits both.
    pairs: list[tuple[Measured, Measured]] = []
    for attempt in range(args.repeat):
        if attempt:
            fresh_copy(raw, dbt_file)
        run = measure(
            dbt_command(target, args.as_of, args.timezone, unit_tests=False),
            dbt_env,
            DBT_PROJECT_DIR,
        )
        fresh_copy(raw, base_file)
        base = measure(
            [sys.executable, "-c", BASELINE_RUNNER, str(base_file), BASELINE_SQL,
             args.as_of.isoformat(), args.timezone, args.memory],
            env, ROOT,
        )
        pairs.append((run, base))
        print(
            f"  run {attempt + 1}: dbt build {run.seconds:6.1f} s ({run.peak_rss_bytes / GIB:.2f} "
            f"GiB), single query {base.seconds:6.1f} s ({base.peak_rss_bytes / GIB:.2f} GiB), "
            f"ratio {run.seconds / base.seconds:.2f}x"
        )
    built = median_run([run for run, _ in pairs])
    baseline = median_run([base for _, base in pairs])
    pair_ratios = sorted(run.seconds / base.seconds for run, base in pairs)
    nodes = slowest_nodes(target)
    other_threads = {}
    for threads in args.compare_threads:
        fresh_copy(raw, dbt_file)
        other_threads[threads] = measure(
            dbt_command(target, args.as_of, args.timezone, unit_tests=False, threads=threads),
            dbt_env,
            DBT_PROJECT_DIR,
        )
    full = None
    if args.with_unit_tests:
        fresh_copy(raw, dbt_file)
        full = measure(
            dbt_command(target, args.as_of, args.timezone, unit_tests=True),
            dbt_env,
            DBT_PROJECT_DIR,
        )

    query_seconds = float(baseline.output.split("QUERY_SECONDS")[-1].split()[0])

    # The last dbt build and the last baseline are on disk: compare those.
    rows, only_dbt, only_base = compare(dbt_file, base_file)
    ratio = built.seconds / baseline.seconds
    print(
        f"  dbt build      : {built.seconds:8.1f} s wall   peak RSS "
        f"{built.peak_rss_bytes / GIB:5.2f} GiB   (median; as the pipeline runs it: no unit tests)"
    )
    for threads, run in other_threads.items():
        print(
            f"  --threads {threads:<4} : {run.seconds:8.1f} s wall   peak RSS "
            f"{run.peak_rss_bytes / GIB:5.2f} GiB   (ratio {run.seconds / baseline.seconds:.2f}x)"
        )
    if full is not None:
        print(
            f"  + unit tests   : {full.seconds:8.1f} s wall   peak RSS "
            f"{full.peak_rss_bytes / GIB:5.2f} GiB   (plain `dbt build`, ratio "
            f"{full.seconds / baseline.seconds:.2f}x)"
        )
    print(
        f"  single query   : {baseline.seconds:8.1f} s wall   peak RSS "
        f"{baseline.peak_rss_bytes / GIB:5.2f} GiB   (median; query alone {query_seconds:.1f} s)"
    )
    print(
        f"  ratio dbt build / single query: {ratio:.2f}x of the medians, per run "
        f"{', '.join(f'{r:.2f}' for r in pair_ratios)}   (goal <= 2x; peak goal < 8 GiB)"
    )
    print("  slowest dbt nodes: " + ", ".join(f"{n} {s:.1f}s" for n, s in nodes))
    same = only_dbt == 0 and only_base == 0
    print(
        f"  patient_features rows {rows:,}: "
        + ("identical to the baseline" if same else
           f"MISMATCH ({only_dbt} rows only in dbt, {only_base} only in the baseline)")
    )
    if not args.keep:
        dbt_file.unlink(missing_ok=True)
        base_file.unlink(missing_ok=True)
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--raw-from", type=Path, help="reuse this warehouse's raw schema")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2026, 6, 30))
    parser.add_argument("--timezone", default="Australia/Sydney")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--memory", default=os.environ.get("DUCKDB_MEMORY_LIMIT", "2GB"))
    parser.add_argument("--keep", action="store_true", help="keep the built warehouse copies")
    parser.add_argument(
        "--repeat", type=int, default=3, help="alternating dbt / baseline runs (median reported)"
    )
    parser.add_argument(
        "--compare-threads",
        type=int,
        nargs="*",
        default=[],
        help="also time the pipeline build with these dbt --threads values",
    )
    parser.add_argument(
        "--with-unit-tests",
        action="store_true",
        help="also time a plain `dbt build` (unit tests included) on a fresh copy",
    )
    args = parser.parse_args()
    sizes: list[int | None] = [None] if args.raw_from else list(args.patients)
    ok = all([bench_size(n, args) for n in sizes])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
