"""Planning sends for every starter campaign over a 1M-patient warehouse, in one process.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_outbound.py \
        [--duckdb PATH | --patients 1000000] [--repeat 3] [--workdir /tmp/outbound-bench]

With --duckdb, PATH is a warehouse built by the pipeline (segments.membership must hold
the starter campaigns' segments). Without it the script writes a synthetic warehouse of
--patients patients (see `synthesise`: addresses some records share, mobiles, consent,
opt-outs) and segments.membership for the eight starter segments at realistic sizes, and
a state store (SQLite) with a ledger of recent messages to 10 % of patients, category
opt-outs and refused addresses.

Every starter campaign is made due on the as-of date (schedules set to daily) and the
clock pinned at 12:30 UTC, when one campaign's window has closed and another keeps quiet
hours, so the plan covers all eight and defers some. Timed: reading the inputs as a run
does, the pure planner (`build_candidates` + `plan_sends`), and the baseline: the same
plan as a DuckDB script over the same inputs in the same process (every suppression step
in order, addresses shared across records, the one-message-per-person rounds, staff
digests, the planner's row order). The two are timed in turns (median of --repeat, after
a warm run each). Their plans must agree row for row (campaign, channel, patient, case,
decision, reason), else the script prints the differing rows and exits 1. Peak RSS is
reported for the process.
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

import sqlalchemy as sa  # noqa: E402

from core.warehouse import connect  # noqa: E402
from ingest.raw_tables import create_empty_raw_tables  # noqa: E402
from outbound import ledger as L  # noqa: E402
from outbound.campaigns import Daily, FrequencyCap, load_campaigns  # noqa: E402
from outbound.categories import ALL  # noqa: E402
from outbound.run import (  # noqa: E402
    OutboundSettings,
    known_segments,
    read_history,
    read_opt_outs,
    state_engine,
)
from outbound.selection import EMAIL_PATTERN, RunClock, build_candidates, plan_sends  # noqa: E402
from outbound.twilio_events import read_refused_addresses  # noqa: E402
from outbound.twilio_events import refused_addresses as refused_table  # noqa: E402
from outbound.warehouse_io import read_contacts  # noqa: E402
from segments.members import ensure_membership_tables, read_members  # noqa: E402

AS_OF = date(2026, 11, 23)  # a Monday
# 12:30: one campaign's window has closed and another keeps quiet hours (deferred).
NOW = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
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
    """A clinic's contacts as the planner meets them: 85 % with an email, of which 4 % is
    another record's address written in other case or with spaces (a family sharing one
    address), 80 % with a mobile; consent yes, no or unknown; opt-outs in the extract,
    category opt-outs and refused addresses in the state store; a ledger of recent sends."""
    rng = np.random.default_rng(seed)
    ids = np.char.add("P", np.char.zfill(np.arange(n).astype(str), 8))
    own = np.char.add(ids, "@mail.example")
    shared = rng.random(n) < 0.04
    other = rng.integers(0, n, n)
    written = np.where(shared, np.char.add(" ", np.char.upper(own[other])), own)
    emails = np.where(rng.random(n) < 0.85, written, None)
    mobiles = np.where(
        rng.random(n) < 0.80,
        np.char.add("04", np.char.zfill(rng.integers(0, 10**8, n).astype(str), 8)),
        None,
    )
    consent = rng.choice(np.array([True, False, None], dtype=object), n, p=[0.6, 0.1, 0.3])
    sms_consent = rng.choice(np.array([True, False, None], dtype=object), n, p=[0.5, 0.1, 0.4])
    patients = pl.DataFrame(
        {
            "patient_id": ids,
            "first_name": np.full(n, "Pat"),
            "email": pl.Series(emails.tolist(), dtype=pl.String),
            "mobile": pl.Series(mobiles.tolist(), dtype=pl.String),
            "accepted_email_marketing": pl.Series(consent.tolist(), dtype=pl.Boolean),
            "accepted_sms_marketing": pl.Series(sms_consent.tolist(), dtype=pl.Boolean),
            "state": rng.choice(["NSW", "VIC", "QLD", "WA"], n, p=[0.5, 0.3, 0.15, 0.05]),
            "country": np.full(n, "Australia"),
        }
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
    # 1 % of patients left a category (a fifth of them every commercial one); 0.5 % of
    # addresses were learned to refuse mail (a bounce or a spam report).
    cat_idx = rng.choice(n, int(n * 0.01), replace=False)
    cats = rng.choice([*sorted({c.category for c in load_campaigns().campaigns}), ALL],
                      len(cat_idx))  # fmt: skip
    written_emails = emails[emails != None].astype(str)  # noqa: E711 (an object array)
    refused = np.unique(np.char.lower(np.char.strip(
        rng.choice(written_emails, int(n * 0.005), replace=False))))  # fmt: skip
    with engine.begin() as conn:
        for cat in np.unique(cats):
            L.record_category_opt_outs(conn, ids[cat_idx[cats == cat]].tolist(), str(cat),
                                       "bench", NOW)  # fmt: skip
        conn.execute(
            sa.insert(refused_table),
            [{"address_key": f"email:{a}", "recorded_at": NOW, "source": "bench"}
             for a in refused],
        )  # fmt: skip
    engine.dispose()


# The same plan as one DuckDB script over the same inputs: people's address keys, every
# suppression step in the planner's order, the one-message-per-person-and-address rounds
# (a statement per round, as the planner does a join per round) and the staff digests,
# in the planner's order (campaign, channel, patient, case).
# It plans e-mail campaigns (every starter campaign is one): a candidate's address is then
# an e-mail or none, so a past SMS counts for it through its patient record only.
PEOPLE_SQL = """
create or replace temp table people as
select patient_id, accepted_email_marketing as consent,
    case when regexp_matches(lower(trim(email)), $email_pattern)
        then 'email:' || lower(trim(email)) end as email_key
from raw.patients
"""
REASONED_SQL = """
create or replace temp table reasoned as
with cand as (
    select m.segment_slug, c.campaign, m.patient_id, min(m.case_id) as case_id
    from segments.membership m join bench_campaigns c using (segment_slug)
    where c.notify_patient and m.as_of = $as_of
    group by all
),
opted as (
    select distinct patient_id from bench_opt_outs where channel in ('email', 'all')
),
refused as (
    select p.email_key as k from opted join people p using (patient_id)
    union select recipient_key from bench_refused
),
said_no as (select distinct email_key as k from people where consent = false),
cat_keys as (
    select 'patient:' || patient_id as k, category from bench_categories
    union select p.email_key, c.category from bench_categories c join people p using (patient_id)
),
c1 as (
    select cand.*, c.priority, c.explicit, c.transactional, c.category, c.cap_max,
        c.cap_window, c.open_now, p.consent,
        coalesce(p.email_key, 'patient:' || cand.patient_id) as recipient_key,
        opted.patient_id is not null as has_opt_out
    from cand join bench_campaigns c using (campaign)
    left join people p using (patient_id)
    left join opted using (patient_id)
),
hist as (
    select row_number() over () as row, h.recipient as hist_patient,
        h.campaign as hist_campaign, h.send_date, h.attempted_at, h.address_key,
        case when h.channel = 'email' then p.email_key end as email_key
    from bench_history h left join people p on p.patient_id = h.recipient
    where h.status in ('sent', 'pending', 'unknown') and h.recipient <> 'staff'
),
matched as (
    select c1.campaign, c1.patient_id, c1.cap_window, hist.* from c1
        join hist on hist.hist_patient = c1.patient_id
    union all select c1.campaign, c1.patient_id, c1.cap_window, hist.* from c1
        join hist on coalesce(hist.email_key, 'patient:' || hist.hist_patient) = c1.recipient_key
    union all select c1.campaign, c1.patient_id, c1.cap_window, hist.* from c1
        join hist on hist.address_key = c1.recipient_key
),
prior as (
    select campaign, patient_id, count(distinct row) as n from matched
    where attempted_at >= $moment - cap_window * interval 1 day
        and not (hist_campaign = campaign and send_date = $as_of and hist_patient = patient_id)
    group by all
),
cat_hit as (
    select c1.campaign, c1.patient_id from c1 join cat_keys ck on ck.k = c1.recipient_key
    where ck.category in (c1.category, 'all')
    union select c1.campaign, c1.patient_id from c1
        join cat_keys ck on ck.k = 'patient:' || c1.patient_id
    where ck.category in (c1.category, 'all')
)
select c1.campaign, c1.segment_slug, c1.patient_id, c1.case_id, c1.priority, c1.open_now,
    c1.recipient_key,
    case
        when c1.has_opt_out or refused.k is not null or (not c1.transactional and (
            c1.consent = false or said_no.k is not null or cat_hit.campaign is not null))
            then 'opted_out'
        when c1.explicit and not coalesce(c1.consent, false) then 'no_consent'
        when c1.recipient_key like 'patient:%' then 'no_address'
        when coalesce(prior.n, 0) >= c1.cap_max then 'frequency_cap'
    end as reason
from c1
left join refused on refused.k = c1.recipient_key
left join said_no on said_no.k = c1.recipient_key
left join cat_hit using (campaign, patient_id)
left join prior using (campaign, patient_id)
"""
ROUNDS_SQL = [
    """create or replace temp table surv as
    select row_number() over (order by priority desc, campaign, patient_id) as rank,
        campaign, patient_id, recipient_key
    from reasoned where reason is null""",
    """create or replace temp table remaining as
    select distinct rank, k from (
        select rank, 'patient:' || patient_id as k from surv
        union all select rank, recipient_key from surv)""",
    "create or replace temp table decided (rank bigint, winner bigint)",
]
ROUND_SQL = [
    """create or replace temp table won as
    select r.rank from remaining r
        join (select k, min(rank) as first from remaining group by k) f using (k)
    group by r.rank having bool_and(f.first = r.rank)""",
    """insert into decided
    select r.rank, min(c.rank) from remaining r
        join (select k, rank from remaining join won using (rank)) c using (k)
    group by r.rank""",
    "delete from remaining where rank in (select rank from decided)",
]
PLAN_SQL = """
select r.campaign, 'email' as channel, r.patient_id, r.case_id,
    case when reason is not null then reason
        when w.campaign <> r.campaign then 'lower_priority'
        when w.patient_id <> r.patient_id then 'same_address'
        when not r.open_now then 'quiet_hours'
        else '' end as reason
from reasoned r
left join surv s using (campaign, patient_id)
left join decided d on d.rank = s.rank
left join surv w on w.rank = d.winner
union all
select distinct c.campaign, 'staff_email', m.patient_id, m.case_id,
    case when c.open_now then '' else 'quiet_hours' end
from segments.membership m join bench_campaigns c using (segment_slug)
where c.staff_digest and m.as_of = $as_of
order by campaign, channel, patient_id, case_id nulls last
"""


def baseline_plan(con: duckdb.DuckDBPyConnection, params: dict) -> pl.DataFrame:
    con.execute(PEOPLE_SQL, {"email_pattern": params["email_pattern"]})
    con.execute(REASONED_SQL, {k: params[k] for k in ("as_of", "moment")})
    for q in ROUNDS_SQL:
        con.execute(q)
    while con.execute("select count(*) from remaining").fetchall()[0][0]:
        for q in ROUND_SQL:
            con.execute(q)
    return (
        con.sql(PLAN_SQL, params={"as_of": params["as_of"]})
        .pl()
        .with_columns(
            pl.when(pl.col("reason") == "")
            .then(pl.lit("send"))
            .when(pl.col("reason") == "quiet_hours")
            .then(pl.lit("deferred"))
            .otherwise(pl.lit("suppressed"))
            .alias("decision")
        )
    )


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
    off_email = sorted(c.slug for c in campaigns if c.channel != "email")
    if off_email:
        print(f"the SQL baseline plans e-mail campaigns only; {off_email} are not")
        return 2
    clock = RunClock.at(NOW, "UTC", AS_OF)
    engine = state_engine(settings)
    rss0 = rss_mib()

    def read_inputs():
        # What the run reads before planning (outbound.run.make_plan).
        with connect(db, read_only=True) as con:
            slugs = sorted({c.segment for c in campaigns})
            members = read_members(con, slugs, AS_OF)
            contacts = read_contacts(con)
        return (
            members,
            contacts,
            read_opt_outs(settings, engine),
            read_history(settings, campaigns, clock, engine),
            (read_refused_addresses(engine), L.read_category_opt_outs(engine),
             L.read_opt_ins(engine)),
        )  # fmt: skip

    t_read, inputs = timed(read_inputs, args.repeat)
    members, contacts, opt_outs, history, consent = inputs

    def plan():
        cands = build_candidates(campaigns, members, AS_OF)
        return plan_sends(campaigns, cands, contacts, opt_outs, history, clock, FrequencyCap(),
                          settings.rules, *consent)  # fmt: skip

    result = plan()  # warm, and the planner's peak memory before the baseline's
    rss_plan = rss_mib()

    # Baseline: the same plan as a DuckDB script over the same inputs, same process.
    cap = FrequencyCap()
    bench_campaigns = pl.DataFrame(
        [
            {
                "campaign": c.slug,
                "segment_slug": c.segment,
                "priority": c.priority,
                "notify_patient": c.notify_patient,
                "staff_digest": c.staff_digest is not None,
                "explicit": c.requires_explicit_consent,
                "transactional": c.purpose == "transactional",
                "category": c.category,
                "cap_max": (c.frequency_cap or cap).max_messages,
                "cap_window": (c.frequency_cap or cap).window_days,
                "open_now": c.in_window(clock.local_time),
            }
            for c in campaigns
        ]
    )
    refused, categories, _ = consent
    con = duckdb.connect(str(db), read_only=True)
    for name, frame in (("bench_campaigns", bench_campaigns), ("bench_history", history),
                        ("bench_opt_outs", opt_outs), ("bench_refused", refused),
                        ("bench_categories", categories)):  # fmt: skip
        con.register(name, frame.to_arrow())
    params = {"as_of": AS_OF, "moment": clock.cap_moment, "email_pattern": EMAIL_PATTERN}
    # Taken in turns, so that a machine that slows down or speeds up during the run
    # weighs on both alike; each side's median.
    base = baseline_plan(con, params)  # warm
    plan_times, base_times = [], []
    for _ in range(args.repeat):
        for fn, times in ((plan, plan_times), (lambda: baseline_plan(con, params), base_times)):
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
            if times is plan_times:
                result = out
            else:
                base = out
    t_plan, t_base = statistics.median(plan_times), statistics.median(base_times)
    con.close()

    # Both plan every row: they must agree row for row.
    cols = ["campaign", "channel", "patient_id", "case_id", "decision", "reason"]
    mine = result.select(cols).sort(cols, nulls_last=True)
    base = base.select(cols).sort(cols, nulls_last=True)
    agree = mine.equals(base)

    n_candidates = members.height
    print(f"inputs: {members.height:,} membership rows, {contacts.height:,} patients, "
          f"{opt_outs.height:,} opt-outs, {history.height:,} ledger rows, "
          f"{consent[0].height:,} refused addresses, "
          f"{consent[1].height:,} category opt-outs")  # fmt: skip
    print(f"plan rows: {result.height:,} (patient "
          f"{result.filter(pl.col('channel') != 'staff_email').height:,}, staff digest "
          f"{result.filter(pl.col('channel') == 'staff_email').height:,})")  # fmt: skip
    print(f"read inputs (warehouse + state store): {t_read * 1000:8.0f} ms")
    print(f"plan (candidates + suppression):       {t_plan * 1000:8.0f} ms")
    print(f"baseline, the same plan in DuckDB SQL: {t_base * 1000:8.0f} ms")
    print(f"ratio plan / baseline:                  {t_plan / t_base:8.2f}")
    print(f"throughput: {n_candidates / t_plan / 1e6:.2f} M candidate rows / s")
    print(f"peak RSS: {rss_plan:.0f} MiB (before reading inputs {rss0:.0f} MiB)")
    print("plan rows by decision and reason:")
    for decision, reason, n in (
        result.group_by("decision", "reason").len().sort("decision", "reason").iter_rows()
    ):
        print(f"  {decision:<10} {reason or '-':<15} {n:>9,}")
    if not agree:
        diff = mine.join(base, on=cols, how="anti").head(10)
        print("MISMATCH between the planner and the SQL baseline; rows only the planner has:")
        print(diff)
        print(base.join(mine, on=cols, how="anti").head(10))
        return 1
    print(
        "planner and baseline agree on every row (campaign, channel, patient, case, "
        "decision, reason)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
