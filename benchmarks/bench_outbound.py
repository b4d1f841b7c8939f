"""Planning sends for every starter campaign over a 1M-patient warehouse, in one process.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_outbound.py \
        [--duckdb PATH | --patients 1000000] [--repeat 3] [--workdir /tmp/outbound-bench]

With --duckdb, PATH is a warehouse built by the pipeline (segments.membership must hold
the starter campaigns' segments). Without it the script writes a synthetic warehouse of
--patients patients: raw.patients (addresses, consent), raw.opt_outs and
segments.membership for the eight starter segments at realistic sizes, plus a send
ledger of recent messages (10 % of patients) in a SQLite state store.

Every starter campaign is made due on the as-of date (schedules set to daily) and the
clock pinned inside all send windows, so the plan covers all eight. Timed (median of
--repeat, warm): reading the inputs, the pure planner (`build_candidates` +
`plan_sends`), and the same suppression written by hand as one DuckDB SQL query over the
same data in the same process (the baseline; both produce one row per patient candidate,
ordered). The decision/reason counts of both must
agree, else the script prints MISMATCH and exits 1. Peak RSS is reported for the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.warehouse import connect  # noqa: E402
from ingest.raw_tables import create_empty_raw_tables  # noqa: E402
from outbound import ledger as L  # noqa: E402
from outbound.campaigns import Daily, FrequencyCap, load_campaigns  # noqa: E402
from outbound.run import (  # noqa: E402
    OutboundSettings,
    known_segments,
    read_history,
    read_opt_outs,
    state_engine,
)
from outbound.selection import EMAIL_PATTERN, RunClock, build_candidates, plan_sends  # noqa: E402
from outbound.warehouse_io import read_contacts  # noqa: E402
from segments.members import ensure_membership_tables, read_members  # noqa: E402

AS_OF = date(2026, 11, 23)  # a Monday
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
# Share of patients in each starter segment (case segments: one case per member row).
SEGMENT_SHARE = {
    "lapsed-physio-6-12mo": 0.08,
    "new-patients-not-rebooked-21d": 0.03,
    "birthdays-next-7-days": 0.02,
    "invoices-outstanding-30d": 0.05,
    "waitlist": 0.01,
    "referral-cases-expiring-30d": 0.02,
    "cases-last-session": 0.02,
    "cases-80pct-invoiced": 0.015,
}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthesise(db: Path, state_url: str, n: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    ids = np.char.add("P", np.char.zfill(np.arange(n).astype(str), 8))
    email_ok = rng.random(n) < 0.85
    emails = np.where(email_ok, np.char.add(ids, "@mail.example"), None)
    consent = rng.choice(np.array([True, False, None], dtype=object), n, p=[0.6, 0.1, 0.3])
    patients = pl.DataFrame(
        {
            "patient_id": ids,
            "first_name": np.full(n, "Pat"),
            "email": pl.Series(emails.tolist(), dtype=pl.String),
            "mobile": np.full(n, None),
            "accepted_email_marketing": pl.Series(consent.tolist(), dtype=pl.Boolean),
            "accepted_sms_marketing": np.full(n, None),
        },
        schema_overrides={"mobile": pl.String, "accepted_sms_marketing": pl.Boolean},
    )
    opt_idx = rng.choice(n, int(n * 0.06), replace=False)
    opt_outs = pl.DataFrame(
        {
            "patient_id": ids[opt_idx],
            "channel": rng.choice(["email", "email", "email", "all", "sms", "sms"], len(opt_idx)),
        }
    )
    members = []
    for slug, share in SEGMENT_SHARE.items():
        idx = rng.choice(n, int(n * share), replace=False)
        case = np.char.add("C", idx.astype(str)) if slug.startswith(("referral", "cases")) else None
        members.append(
            pl.DataFrame(
                {
                    "segment_slug": slug,
                    "patient_id": ids[idx],
                    "case_id": case if case is not None else np.full(len(idx), None),
                    "as_of": AS_OF,
                },
                schema_overrides={"case_id": pl.String},
            )
        )
    membership = pl.concat(members)
    with connect(db) as con:
        create_empty_raw_tables(con)
        con.register("p", patients.to_arrow())
        con.execute(f"insert into raw.patients ({', '.join(patients.columns)}) select * from p")
        con.register("o", opt_outs.to_arrow())
        con.execute("insert into raw.opt_outs (patient_id, channel) select * from o")
        con.execute("create schema if not exists segments")
        con.register("m", membership.to_arrow())
        con.execute(
            "create or replace table segments.membership as "
            "select segment_slug, patient_id, case_id, as_of, now() as entered_at from m"
        )
        ensure_membership_tables(con)
        con.execute(
            "insert into segments.segment_runs select segment_slug, as_of, count(*), 0, 0, "
            "now() from segments.membership group by all"
        )
    engine = state_engine(
        OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")
    )
    hist_idx = rng.choice(n, int(n * 0.10), replace=False)
    days = rng.integers(1, 15, len(hist_idx))
    entries = [
        L.LedgerEntry("earlier-campaign", pid, pid, None, "some-segment", "email")
        for pid in ids[hist_idx]
    ]
    # One insert per send date (the ledger key includes it), requested that day at 10:00.
    for d in np.unique(days):
        sel = [e for e, dd in zip(entries, days, strict=True) if dd == d]
        sent_at = NOW - timedelta(days=int(d))
        ids_ = L.insert_pending(engine, sel, sent_at.date(), "bench", sent_at)
        L.set_status(engine, ids_, L.SENT)
    engine.dispose()


BASELINE_SQL = """
with campaigns as (select * from bench_campaigns),
cand as (
    select c.campaign, c.priority, c.explicit, c.cap_max, c.cap_window, m.patient_id
    from segments.membership m join campaigns c on c.segment_slug = m.segment_slug
    where c.notify_patient
    group by all
),
refused as (
    select distinct patient_id from raw.opt_outs where channel in ('email', 'all')
),
hist as (
    select h.recipient as patient_id, h.campaign as hist_campaign, h.send_date, h.attempted_at
    from bench_history h
    where h.status in ('sent', 'pending', 'unknown') and h.recipient <> 'staff'
),
prior as (
    select cand.campaign, cand.patient_id, count(*) as n
    from cand join hist on hist.patient_id = cand.patient_id
    where cand.cap_window > 0
        and hist.attempted_at >= $moment - cand.cap_window * interval 1 day
        and not (hist.hist_campaign = cand.campaign and hist.send_date = $as_of)
    group by all
),
reasoned as (
    select cand.campaign, cand.patient_id, cand.priority,
        case
            when r.patient_id is not null or p.accepted_email_marketing = false then 'opted_out'
            when cand.explicit and coalesce(p.accepted_email_marketing, false) = false
                then 'no_consent'
            when not coalesce(regexp_matches(trim(p.email), $email_pattern), false)
                then 'no_address'
            when coalesce(prior.n, 0) >= cand.cap_max then 'frequency_cap'
        end as reason
    from cand
    left join raw.patients p on p.patient_id = cand.patient_id
    left join refused r on r.patient_id = cand.patient_id
    left join prior on prior.campaign = cand.campaign and prior.patient_id = cand.patient_id
),
ranked as (
    select *, row_number() over (
        partition by patient_id order by (reason is null) desc, priority desc, campaign
    ) as rank
    from reasoned
)
select campaign, patient_id,
    case when reason is null and rank = 1 then 'send' else 'suppressed' end as decision,
    case when reason is null and rank > 1 then 'lower_priority' else coalesce(reason, '') end
        as reason
from ranked
order by campaign, patient_id
"""


def timed(fn, repeat: int):
    times, result = [], None
    fn()  # warm
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duckdb", type=Path)
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/outbound-bench"))
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    state_url = f"sqlite:///{args.workdir / 'state.db'}"
    if args.duckdb:
        db = args.duckdb
    else:
        db = args.workdir / f"warehouse-{args.patients}.duckdb"
        (args.workdir / "state.db").unlink(missing_ok=True)
        db.unlink(missing_ok=True)
        t = time.perf_counter()
        synthesise(db, state_url, args.patients)
        print(f"synthetic warehouse: {args.patients:,} patients in {time.perf_counter() - t:.1f}s")

    settings = OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC")
    known = known_segments(settings)
    campaigns = [
        c.model_copy(update={"schedule": Daily(every="day")})
        for c in load_campaigns(known_segments=known).campaigns
    ]
    clock = RunClock.at(NOW, "UTC", AS_OF)
    engine = state_engine(settings)
    rss0 = rss_mib()

    def read_inputs():
        with connect(db, read_only=True) as con:
            slugs = sorted({c.segment for c in campaigns})
            members = read_members(con, slugs, AS_OF)
            contacts = read_contacts(con)
        return (
            members,
            contacts,
            read_opt_outs(settings, engine),
            read_history(settings, campaigns, clock, engine),
        )

    t_read, (members, contacts, opt_outs, history) = timed(read_inputs, args.repeat)

    def plan():
        cands = build_candidates(campaigns, members, AS_OF)
        return plan_sends(campaigns, cands, contacts, opt_outs, history, clock, FrequencyCap())

    t_plan, result = timed(plan, args.repeat)
    rss_plan = rss_mib()

    # Baseline: the same suppression as one hand-written DuckDB query, same process.
    bench_campaigns = pl.DataFrame(
        [
            {
                "campaign": c.slug,
                "segment_slug": c.segment,
                "priority": c.priority,
                "notify_patient": c.notify_patient,
                "explicit": c.requires_explicit_consent,
                "cap_max": (c.frequency_cap or FrequencyCap()).max_messages,
                "cap_window": (c.frequency_cap or FrequencyCap()).window_days,
            }
            for c in campaigns
        ]
    )
    con = duckdb.connect(str(db), read_only=True)
    con.register("bench_campaigns", bench_campaigns.to_arrow())
    con.register("bench_history", history.to_arrow())

    def baseline():
        params = {"as_of": AS_OF, "moment": NOW, "email_pattern": EMAIL_PATTERN}
        return con.sql(BASELINE_SQL, params=params).pl()

    t_base, base = timed(baseline, args.repeat)
    con.close()

    mine = (
        result.filter(pl.col("channel") == "email")
        .group_by("campaign", "decision", "reason")
        .agg(pl.len().cast(pl.Int64).alias("n"))
        .sort("campaign", "decision", "reason")
    )
    # Both produce every row; the comparison is on the counts per campaign/decision/reason.
    base = (
        base.group_by("campaign", "decision", "reason")
        .agg(pl.len().cast(pl.Int64).alias("n"))
        .sort("campaign", "decision", "reason")
    )
    agree = mine.equals(base)

    n_candidates = members.height
    print(f"inputs: {members.height:,} membership rows, {contacts.height:,} patients, "
          f"{opt_outs.height:,} opt-outs, {history.height:,} ledger rows")  # fmt: skip
    print(f"plan rows: {result.height:,} (patient {mine['n'].sum():,}, staff digest "
          f"{result.filter(pl.col('channel') == 'staff_email').height:,})")  # fmt: skip
    print(f"read inputs (warehouse + state store): {t_read * 1000:8.0f} ms")
    print(f"plan (candidates + suppression):       {t_plan * 1000:8.0f} ms")
    print(f"baseline, hand-written DuckDB SQL:      {t_base * 1000:8.0f} ms")
    print(f"ratio plan / baseline:                  {t_plan / t_base:8.2f}")
    print(f"throughput: {n_candidates / t_plan / 1e6:.2f} M candidate rows / s")
    print(f"peak RSS: {rss_plan:.0f} MiB (before reading inputs {rss0:.0f} MiB)")
    print(result.group_by("decision", "reason").len().sort("decision", "reason"))
    if not agree:
        print("MISMATCH between the planner and the SQL baseline")
        print(mine)
        print(base)
        return 1
    print("planner and baseline agree on every campaign / decision / reason count")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
