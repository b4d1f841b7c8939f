"""Synthetic clinic generator: a realistic Australian multi-site clinic group, any size.

`generate_clinic(patients, out_dir)` writes an extract in either input format (canonical
CSV or Cliniko API pages) that demos, tests and benchmarks stand on. Everything is
vectorised with numpy and polars: patients are generated in fixed-size chunks (each with
its own random stream, so the output depends only on seed, as-of date and patient
count), and appointments, invoices and cases are derived per chunk and appended to the
output files, which keeps memory bounded at a million patients and twenty million
appointments.

The story each patient follows (see docs/synthetic-data.md): an archetype (prospect,
new patient, one-off, regular, lapsed, dormant) fixes the window in which they come;
within it they run courses of treatment (physio weekly, pilates classes, chiro monthly,
a surgical pathway with a pre-op assessment, ...), some under a referral case (EPC, DVA,
WorkCover). Visits happen in clinic hours in the site's time zone and are stored in UTC.
The extract is taken at midnight at the start of the as-of day (Sydney time): visits
before the as-of date have their outcome (attended, did not arrive, cancelled), later
ones are bookings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

from extract import synthetic_catalog as cat
from extract.synthetic_writers import ClinikoSink, CsvSink
from ingest.entities import (
    ENTITIES,
    INVOICE_STATUSES,
    LEAD_STATUSES,
    PATIENT_STATUSES,
)

FORMATS = ("csv", "cliniko")
# Patients per generation chunk. Part of the output's identity: changing it changes
# which random stream each patient draws from (and so the generated clinic).
CHUNK_PATIENTS = 50_000
PATIENTS_PER_PRACTITIONER = 1_500
MIN_PRACTITIONERS = 8
PAST_DAYS = 6 * 365  # history reaches back six years
FUTURE_DAYS = 90  # bookings reach three months ahead
MAX_FUTURE_VISITS_PER_COURSE = 4  # a course is booked a few visits ahead, not to its end
LEGACY_DAYS = 3 * 365  # records older than this carry small ids, as in older Cliniko accounts
DAY = 86_400
HOUR = 3_600

ARCHETYPES = ("prospect", "new_single", "one_off", "regular", "lapsed", "dormant")
PROSPECT, NEW_SINGLE, ONE_OFF, REGULAR, LAPSED, DORMANT = range(len(ARCHETYPES))
ARCHETYPE_P = (0.06, 0.03, 0.10, 0.45, 0.16, 0.20)
# Extra courses (Poisson mean) on top of the first, for archetypes with several courses.
EXTRA_COURSES = {REGULAR: 2.6, LAPSED: 1.6, DORMANT: 1.1}
SURGICAL_SOON_P = 0.03  # regulars with a surgical consult booked in the next 14 days
PRE_OP_P = 0.6  # surgical pathways that end with a pre-op assessment
ACTIVE_WITHIN_DAYS = 548  # a patient seen (or booked) within 18 months is active

# 19-digit id bases (Cliniko's newer ids), one per entity so ids never collide across them.
_ID_BASE = {
    "practitioners": 1_100_000_000_000_000_000,
    "patients": 1_200_000_000_000_000_000,
    "appointments": 1_300_000_000_000_000_000,
    "invoices": 1_400_000_000_000_000_000,
    "cases": 1_500_000_000_000_000_000,
}
_ID_STRIDE = 1_000_003  # spreads consecutive ids like Cliniko's sharded sequence does


FLOAT_DECIMALS = 6


@dataclass(frozen=True)
class GenerationSummary:
    rows: dict[str, int]  # entity -> rows written
    out_dir: Path
    fmt: str
    as_of: date
    seconds: float


@dataclass(frozen=True)
class Campaign:
    name: str
    source: str
    procedures: tuple[str, ...]
    day: int | None  # event day relative to as-of (None: leads arrive any day)


def campaigns_for(as_of: date) -> tuple[Campaign, ...]:
    """Lead campaigns, named relative to the as-of date so that seminars are recent."""

    def month(days_before: int) -> str:
        return date.fromordinal(as_of.toordinal() - days_before).strftime("%Y-%m")

    return (
        Campaign(f"Knee pain seminar {month(70)}", "event",
                 ("Knee replacement", "ACL reconstruction", "Knee arthroscopy"), -70),
        Campaign(f"Back pain seminar {month(250)}", "event",
                 ("Back pain management", "Lumbar discectomy"), -250),
        Campaign("Google Ads - Back pain", "google_ads",
                 ("Back pain management", "Lumbar discectomy"), None),
        Campaign("Facebook - Pilates intro", "facebook", ("Clinical Pilates",), None),
        Campaign("Referral partner - GP", "referral_partner",
                 ("Hip replacement", "Shoulder arthroscopy", "Knee replacement"), None),
        Campaign("Website enquiry", "website",
                 ("Sports massage", "Orthotics", "Back pain management"), None),
    )


# Referring GPs by name as the Cliniko adapter resolves a case's contact (first and last
# name), so that both formats of one seed load the same values.
GP_NAMES = [f"{first} {last}" for first, last, _ in cat.GPS]
PROSPECT_CAMPAIGN_P = (0.30, 0.12, 0.20, 0.18, 0.10, 0.10)
CONVERTED_CAMPAIGN_P = (0.0, 0.0, 0.35, 0.25, 0.25, 0.15)  # seminars rarely convert directly
PROSPECT_LEAD_STATUSES = (("new", 0.22), ("contacted", 0.38), ("scheduled", 0.08),
                          ("lost", 0.32))


# ---------------------------------------------------------------------------------------
# small vectorised helpers


def _lookup(values: tuple[str | None, ...] | list[str | None], idx: np.ndarray) -> pl.Series:
    """values[idx] as a polars string series (None stays null)."""
    return pl.Series(list(values), dtype=pl.String).gather(idx)


def _weighted(rng: np.random.Generator, pairs: tuple, n: int) -> np.ndarray:
    """Indices into `pairs` ((value, weight), ...) drawn by weight."""
    p = np.array([w for _, w in pairs], dtype=float)
    return rng.choice(len(pairs), size=n, p=p / p.sum())


def _ids(entity_name: str, index: np.ndarray, legacy: np.ndarray) -> pl.Series:
    """Cliniko-style ids: small integers for legacy records, 19 digits after.

    Held as Int64 while generating (cheap to gather into millions of rows); the text
    written is the same digits, and the Cliniko writer turns them into JSON strings.
    """
    base = _ID_BASE[entity_name]
    return pl.Series(np.where(legacy, index + 1, base + index * _ID_STRIDE))


def _timestamps(secs: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """Epoch seconds (UTC) -> naive UTC datetimes; rows where `valid` is false are null."""
    s = pl.Series(secs.astype(np.int64) * 1000).cast(pl.Datetime("ms"))
    if valid is None:
        return s
    return pl.select(pl.when(pl.Series(valid)).then(s)).to_series()


def _dates(days: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    s = pl.Series(days.astype(np.int32)).cast(pl.Date)
    if valid is None:
        return s
    return pl.select(pl.when(pl.Series(valid)).then(s)).to_series()


def _nullable(s: pl.Series, valid: np.ndarray) -> pl.Series:
    return pl.select(pl.when(pl.Series(valid)).then(s)).to_series()


def _digits(values: np.ndarray, width: int) -> pl.Series:
    return pl.Series(values).cast(pl.String).str.zfill(width)


def _local_to_utc(local_secs: np.ndarray, tz_index: np.ndarray) -> np.ndarray:
    """Wall-clock seconds in each row's site time zone -> UTC epoch seconds.

    Clinic hours (07:00-19:15) never fall in a daylight-saving gap or overlap, so the
    conversion is unambiguous.
    """
    out = np.empty_like(local_secs)
    naive = pl.Series(local_secs * 1000).cast(pl.Datetime("ms"))
    for i, zone in enumerate(cat.TIME_ZONES):
        rows = tz_index == i
        if rows.any():
            out[rows] = naive.filter(pl.Series(rows)).dt.replace_time_zone(
                zone, ambiguous="earliest"
            ).dt.epoch("s").to_numpy()
    return out


def _group_reduce(ufunc: np.ufunc, n: int, idx: np.ndarray, values: np.ndarray,
                  fill: int) -> np.ndarray:
    out = np.full(n, fill, dtype=np.int64)
    ufunc.at(out, idx, values)
    return out


# ---------------------------------------------------------------------------------------
# the clinic group: sites, services, practitioners, referring GPs


@dataclass
class _Clinic:
    as_of: date
    as_of_day: int  # days since 1970-01-01
    now: int  # extract instant: start of the as-of day in Sydney, epoch seconds
    campaigns: tuple[Campaign, ...]
    locations: pl.DataFrame
    appointment_types: pl.DataFrame
    practitioners: pl.DataFrame
    contacts: pl.DataFrame
    site_tz: np.ndarray
    prac_designation: np.ndarray
    prac_site: np.ndarray
    prac_left: np.ndarray  # day relative to as-of when they left (huge when active)
    prac_ids: pl.Series
    location_ids: pl.Series
    type_ids: pl.Series
    counters: dict[str, int] = field(default_factory=dict)

    def next_index(self, name: str, n: int) -> np.ndarray:
        start = self.counters.get(name, 0)
        self.counters[name] = start + n
        return np.arange(start, start + n, dtype=np.int64)

    def pick_practitioners(self, rng: np.random.Generator, designation: np.ndarray,
                           site: np.ndarray, after_day: np.ndarray | None) -> np.ndarray:
        """A practitioner of each row's designation, at its site when one works there.

        With `after_day`, rows whose first pick had left before that day are re-drawn
        among those still active (a course starts with someone who is still employed).
        """
        out = np.full(len(designation), -1, dtype=np.int64)
        active = self.prac_left > 10**6 - 1
        for d in np.unique(designation):
            of_d = self.prac_designation == d
            for s in np.unique(site[designation == d]):
                rows = np.flatnonzero((designation == d) & (site == s))
                pool = np.flatnonzero(of_d & (self.prac_site == s))
                if len(pool) == 0:
                    pool = np.flatnonzero(of_d)
                out[rows] = pool[rng.integers(0, len(pool), len(rows))]
                if after_day is None:
                    continue
                stale = rows[self.prac_left[out[rows]] <= after_day[rows]]
                if len(stale):
                    pool = np.flatnonzero(of_d & active & (self.prac_site == s))
                    if len(pool) == 0:
                        pool = np.flatnonzero(of_d & active)
                    out[stale] = pool[rng.integers(0, len(pool), len(stale))]
        return out


def _build_clinic(n_patients: int, seed: int, as_of: date) -> _Clinic:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1 << 20,)))
    as_of_day = (as_of - date(1970, 1, 1)).days
    sydney_midnight = pl.Series([as_of_day * DAY * 1000]).cast(pl.Datetime("ms"))
    now = int(sydney_midnight.dt.replace_time_zone("Australia/Sydney").dt.epoch("s")[0])
    sites = cat.SITES

    locations = pl.DataFrame({
        "location_id": list(range(1, len(sites) + 1)),
        "name": [s.name for s in sites],
        "city": [s.city for s in sites],
        "state": [s.state for s in sites],
        "post_code": [s.post_code for s in sites],
        "latitude": [s.latitude for s in sites],
        "longitude": [s.longitude for s in sites],
        "time_zone": [s.time_zone for s in sites],
        "_address": [s.address for s in sites],
    })
    appointment_types = pl.DataFrame({
        "appointment_type_id": list(range(1, len(cat.SERVICES) + 1)),
        "name": [s.name for s in cat.SERVICES],
        "category": [s.category for s in cat.SERVICES],
        "duration_minutes": [s.duration_minutes for s in cat.SERVICES],
    })

    n_prac = max(MIN_PRACTITIONERS, round(n_patients / PATIENTS_PER_PRACTITIONER))
    n_des = len(cat.DESIGNATIONS)
    designation = np.concatenate([np.arange(n_des),
                                  _weighted(rng, cat.DESIGNATIONS, n_prac - n_des)])
    site_p = np.array([s.share for s in sites])
    site = np.concatenate([np.arange(n_des) % len(sites),
                           rng.choice(len(sites), n_prac - n_des, p=site_p / site_p.sum())])
    # The first of each designation stays, so every service remains bookable.
    n_left = max(1, round(0.25 * n_prac))
    left = np.zeros(n_prac, dtype=bool)
    leavers = rng.choice(np.arange(n_des, n_prac), n_left, replace=False)
    left[leavers] = True
    left_day = np.where(left, -rng.integers(20, 1800, n_prac), 10**6)
    # Someone always left recently: their patients are the orphans front desk calls now.
    left_day[leavers[0]] = -rng.integers(30, 120)
    female = rng.random(n_prac) < 0.6
    first = np.where(female, np.array(cat.FEMALE_NAMES)[rng.integers(0, 30, n_prac)],
                     np.array(cat.MALE_NAMES)[rng.integers(0, 30, n_prac)])
    index = np.arange(n_prac)
    prac_ids = _ids("practitioners", index, index < n_prac // 2)
    practitioners = pl.DataFrame({
        "practitioner_id": prac_ids,
        "first_name": first,
        "last_name": np.array(cat.LAST_NAMES)[rng.integers(0, len(cat.LAST_NAMES), n_prac)],
        "designation": _lookup([d for d, _ in cat.DESIGNATIONS], designation),
        "active": ~left,
        "left_at": _timestamps((as_of_day + left_day) * DAY + 7 * HOUR, left),
        "_location_id": locations["location_id"].gather(site),
    })
    contacts = pl.DataFrame({
        "contact_id": list(range(1, len(cat.GPS) + 1)),
        "first_name": [g[0] for g in cat.GPS],
        "last_name": [g[1] for g in cat.GPS],
        "company_name": [g[2] for g in cat.GPS],
    })
    return _Clinic(
        as_of=as_of, as_of_day=as_of_day, now=now, campaigns=campaigns_for(as_of),
        locations=locations, appointment_types=appointment_types,
        practitioners=practitioners, contacts=contacts,
        site_tz=np.array([cat.TIME_ZONES.index(s.time_zone) for s in sites]),
        prac_designation=designation, prac_site=site, prac_left=left_day,
        prac_ids=prac_ids, location_ids=locations["location_id"],
        type_ids=appointment_types["appointment_type_id"],
    )


# ---------------------------------------------------------------------------------------
# one chunk of patients and everything that hangs off them


def _generate_chunk(clinic: _Clinic, rng: np.random.Generator, first_index: int,
                    n: int) -> dict[str, pl.DataFrame]:
    now, today = clinic.now, clinic.as_of_day
    kinds = cat.COURSE_KINDS
    arch = rng.choice(len(ARCHETYPES), n, p=ARCHETYPE_P)
    site_p = np.array([s.share for s in cat.SITES])
    home = rng.choice(len(cat.SITES), n, p=site_p / site_p.sum())
    kind_p = np.array([k.patient_share for k in kinds])
    kind_p /= kind_p.sum()
    main_kind = rng.choice(len(kinds), n, p=kind_p)
    no_show = rng.random(n) < 0.05  # the patients who often do not turn up
    prospect = arch == PROSPECT

    # ---- the window in which each patient comes (days relative to as-of)
    first = np.select(
        [arch == NEW_SINGLE, arch == ONE_OFF, arch == REGULAR, arch == LAPSED],
        [-rng.integers(1, 46, n), -rng.integers(14, PAST_DAYS, n),
         -rng.integers(30, PAST_DAYS, n), -rng.integers(200, PAST_DAYS, n)],
        -rng.integers(1000, PAST_DAYS, n),
    )
    latest_start = np.select(
        [arch == REGULAR, arch == LAPSED, arch == DORMANT],
        [-rng.integers(0, 120, n), -rng.integers(150, 600, n), np.full(n, -1000)],
        first,
    )
    latest_start = np.maximum(latest_start, first)

    # ---- courses of treatment
    n_courses = np.where(prospect, 0, 1)
    for a, mean in EXTRA_COURSES.items():
        rows = arch == a
        n_courses[rows] += rng.poisson(mean, rows.sum())
    surgical_soon = (arch == REGULAR) & (rng.random(n) < SURGICAL_SOON_P)
    n_courses += surgical_soon
    cp = np.repeat(np.arange(n), n_courses)  # course -> patient (row in chunk)
    n_c = len(cp)
    rank = np.arange(n_c) - np.repeat(np.cumsum(n_courses) - n_courses, n_courses)
    kind = np.where((rank == 0) | (rng.random(n_c) < 0.7), main_kind[cp],
                    rng.choice(len(kinds), n_c, p=kind_p))
    start = first[cp] + (rng.random(n_c) * (latest_start - first)[cp]).astype(np.int64)
    start = np.where(rank == 0, first[cp], start)
    soon = surgical_soon[cp] & (rank == n_courses[cp] - 1)
    kind = np.where(soon, cat.SURGERY_KIND, kind)
    start = np.where(soon, rng.integers(1, 15, n_c), start)

    cadence = np.zeros(n_c, dtype=np.int64)
    n_visits = np.zeros(n_c, dtype=np.int64)
    case_share = np.zeros(n_c)
    for ki, k in enumerate(kinds):
        rows = kind == ki
        m = int(rows.sum())
        cadence[rows] = rng.choice(k.cadences, m, p=k.cadence_p)
        n_visits[rows] = k.min_visits + rng.geometric(1 / (1 + k.mean_extra_visits), m) - 1
        case_share[rows] = k.case_share
    single = np.isin(arch, (ONE_OFF, NEW_SINGLE))[cp]
    n_visits = np.where(single, 1, n_visits)
    surgery = kind == cat.SURGERY_KIND
    pre_op = surgery & (rng.random(n_c) < PRE_OP_P)
    n_visits = np.where(surgery, np.where(soon, 1, n_visits) + pre_op, n_visits)

    # ---- referral cases: a course run under an EPC / DVA / WorkCover referral
    multi = np.isin(arch, (REGULAR, LAPSED, DORMANT))[cp]
    is_case = multi & ~soon & (rng.random(n_c) < case_share)
    referral = _weighted(rng, tuple((r, r.share) for r in cat.REFERRALS), n_c)
    max_sessions = np.array([r.max_sessions for r in cat.REFERRALS])[referral]
    # Courses use most of their sessions: some none left, some one or two.
    case_visits = np.maximum(1, max_sessions - rng.choice([0, 0, 1, 1, 2, 3, 4], n_c))
    n_visits = np.where(is_case, case_visits, n_visits)
    workcover = referral == [r.referral_type for r in cat.REFERRALS].index("WorkCover")
    cadence = np.where(is_case, np.minimum(cadence, np.where(workcover, 7, 28)), cadence)
    issue = start - rng.integers(0, 22, n_c)
    expiry = issue + np.array([r.valid_days for r in cat.REFERRALS])[referral]

    # ---- who delivers each course
    des_names = [d for d, _ in cat.DESIGNATIONS]
    kind_designation = np.array([des_names.index(k.designation) for k in kinds])
    prac = clinic.pick_practitioners(rng, kind_designation[kind], home[cp], start)
    nurse = np.full(n_c, -1, dtype=np.int64)
    if surgery.any():
        nurse[surgery] = clinic.pick_practitioners(
            rng, np.full(int(surgery.sum()), des_names.index(cat.PRE_OP_DESIGNATION)),
            home[cp][surgery], start[surgery])
    first_service = np.array([cat.SERVICE_INDEX[k.first_service] for k in kinds])[kind]
    next_service = np.array([cat.SERVICE_INDEX[k.next_service] for k in kinds])[kind]
    short_massage = (kind == cat.MASSAGE_KIND) & (rng.random(n_c) < 0.3)
    half_hour = cat.SERVICE_INDEX["Remedial Massage 30 min"]
    first_service = np.where(short_massage, half_hour, first_service)
    next_service = np.where(short_massage, half_hour, next_service)

    # ---- visits
    vc = np.repeat(np.arange(n_c), n_visits)  # visit -> course
    k_in = np.arange(len(vc)) - np.repeat(np.cumsum(n_visits) - n_visits, n_visits)
    jitter = np.where(k_in > 0, rng.integers(-1, 2, len(vc)), 0)
    day = start[vc] + k_in * cadence[vc] + jitter
    day += ((today + day + 3) % 7 == 6)  # no Sunday trading: move to Monday
    service = np.where(k_in == 0, first_service[vc], next_service[vc])
    last_of_course = k_in == n_visits[vc] - 1
    pre_op_visit = pre_op[vc] & last_of_course
    service = np.where(pre_op_visit, cat.SERVICE_INDEX["Pre-op Assessment"], service)
    vprac = np.where(pre_op_visit, nurse[vc], prac[vc])
    past = day < 0
    past_in_course = np.bincount(vc, weights=past, minlength=n_c).astype(np.int64)
    keep = (
        (day <= FUTURE_DAYS)
        # a course stops when its practitioner leaves: their patients become orphans
        & (day < clinic.prac_left[vprac])
        & (past | (k_in - past_in_course[vc] < MAX_FUTURE_VISITS_PER_COURSE))
    )
    # Each patient's visits in date order (courses interleave).
    order = np.flatnonzero(keep)
    order = order[np.lexsort((day[order], cp[vc[order]]))]
    vc, day, service, vprac, past = vc[order], day[order], service[order], vprac[order], past[order]
    vp = cp[vc]  # visit -> patient
    n_v = len(vc)

    abs_day = today + day
    saturday = (abs_day + 3) % 7 == 5
    minute = np.where(saturday, 8 * 60 + 15 * rng.integers(0, 16, n_v),
                      7 * 60 + 15 * rng.integers(0, 46, n_v))
    vsite = clinic.prac_site[vprac]
    starts = _local_to_utc(abs_day * DAY + minute * 60, clinic.site_tz[vsite])
    durations = np.array([s.duration_minutes for s in cat.SERVICES])[service]
    ends = starts + durations * 60

    cancelled = rng.random(n_v) < np.where(no_show[vp], 0.12, 0.07)
    dna = past & ~cancelled & (rng.random(n_v) < np.where(no_show[vp], 0.25, 0.025))
    arrived = past & ~cancelled & ~dna
    created = np.minimum(starts - rng.integers(HOUR, 21 * DAY, n_v),
                         now - rng.integers(60, 3 * DAY, n_v))
    late = rng.random(n_v) < 0.3
    cancelled_at = starts - np.where(late, rng.integers(HOUR, 23 * HOUR, n_v),
                                     rng.integers(DAY, 10 * DAY, n_v))
    cancelled_at = np.minimum(cancelled_at, now - rng.integers(60, 2 * DAY, n_v))
    created = np.where(cancelled & (created >= cancelled_at),
                       cancelled_at - rng.integers(HOUR, 3 * DAY, n_v), created)

    # A visit belongs to its course's case while the referral is valid.
    case_rows = np.flatnonzero(is_case)
    case_index = clinic.next_index("cases", len(case_rows))
    course_case = np.full(n_c, -1, dtype=np.int64)
    course_case[case_rows] = np.arange(len(case_rows))
    vcase = np.where(day <= expiry[vc], course_case[vc], -1)

    # ---- patients, now that their visits are known
    last_day = _group_reduce(np.maximum, n, vp, day, -(10**6))
    first_created = _group_reduce(np.minimum, n, vp, created, 2**62)
    first_start = _group_reduce(np.minimum, n, vp, starts, 2**62)
    has_visits = last_day > -(10**6)
    campaigns = clinic.campaigns

    # leads: every prospect, and some patients who came through a campaign
    converted = (~prospect & has_visits & (first_created > now - 730 * DAY)
                 & (rng.random(n) < 0.15))
    lead_rows = np.flatnonzero(prospect | converted)
    lp_converted = converted[lead_rows]
    n_l = len(lead_rows)
    lead_campaign = np.where(
        lp_converted,
        rng.choice(len(campaigns), n_l, p=CONVERTED_CAMPAIGN_P),
        rng.choice(len(campaigns), n_l, p=PROSPECT_CAMPAIGN_P),
    )
    event_day = np.array([c.day if c.day is not None else 0 for c in campaigns])
    is_event = np.array([c.day is not None for c in campaigns])[lead_campaign]
    # Seminar attendees are entered in the early evening (Sydney) of the event.
    lead_created = np.where(
        is_event,
        (today + event_day[lead_campaign]) * DAY + 8 * HOUR + rng.integers(0, 3 * HOUR, n_l),
        now - rng.integers(HOUR, 400 * DAY, n_l),
    )
    lead_created = np.where(lp_converted,
                            first_created[lead_rows] - rng.integers(DAY, 14 * DAY, n_l),
                            lead_created)
    prospect_status = np.array([LEAD_STATUSES.index(s) for s, _ in PROSPECT_LEAD_STATUSES])
    lead_status = np.where(lp_converted, LEAD_STATUSES.index("converted"),
                           prospect_status[_weighted(rng, PROSPECT_LEAD_STATUSES, n_l)])
    procedure_of_interest, _ = _ragged_pick(
        rng, tuple(c.procedures for c in campaigns), lead_campaign)

    created_at = np.where(has_visits, first_created - rng.integers(0, 3 * DAY, n), now)
    patient_lead_created = np.full(n, now, dtype=np.int64)
    patient_lead_created[lead_rows] = lead_created
    # A person enters the system with their first lead, or their first booking.
    created_at = np.where(prospect, patient_lead_created,
                          np.minimum(created_at, patient_lead_created))
    legacy_patient = created_at < now - LEGACY_DAYS * DAY
    patient_index = first_index + np.arange(n, dtype=np.int64)
    patient_ids = _ids("patients", patient_index, legacy_patient)

    active, inactive, archived_status, prospect_status = (
        PATIENT_STATUSES.index(s) for s in ("active", "inactive", "archived", "prospect"))
    status = np.where(last_day >= -ACTIVE_WITHIN_DAYS, active, inactive)
    archived = has_visits & (
        ((last_day < -3 * 365) & (rng.random(n) < 0.3))
        | ((last_day < 0) & (rng.random(n) < 0.01))
    )
    status = np.where(archived, archived_status, status)
    status = np.where(prospect, prospect_status, status)
    archived_day = np.minimum(last_day + rng.integers(30, 400, n), -1)

    patients = _patients_frame(clinic, rng, n, patient_ids, home, prospect, status,
                               created_at, archived, archived_day)
    dva_patients = np.zeros(n, dtype=bool)
    dva_referral = [r.referral_type for r in cat.REFERRALS].index("DVA")
    dva_patients[cp[case_rows[referral[case_rows] == dva_referral]]] = True
    patients = patients.with_columns(
        pl.when(pl.Series(dva_patients)).then(pl.lit("DVA"))
        .otherwise(pl.col("insurance_plan")).alias("insurance_plan")
    )

    # ---- appointments
    appt_index = clinic.next_index("appointments", n_v)
    appt_ids = _ids("appointments", appt_index, starts < now - LEGACY_DAYS * DAY)
    case_ids = _ids("cases", case_index, issue[case_rows] < -LEGACY_DAYS)
    vcase_ids = _nullable(case_ids.gather(np.maximum(vcase, 0)), vcase >= 0)
    vprac_ids = clinic.prac_ids.gather(vprac)
    appointments = pl.DataFrame({
        "appointment_id": appt_ids,
        "patient_id": patient_ids.gather(vp),
        "starts_at": _timestamps(starts),
        "appointment_type_id": clinic.type_ids.gather(service),
        "practitioner_id": vprac_ids,
        "location_id": clinic.location_ids.gather(vsite),
        "case_id": vcase_ids,
        "ends_at": _timestamps(ends),
        "created_at": _timestamps(created),
        "cancelled_at": _timestamps(cancelled_at, cancelled),
        "did_not_arrive": dna,
        "patient_arrived": arrived,
    })

    # ---- invoices: attended visits (most), and a fee for some missed ones
    invoiced = (arrived & (rng.random(n_v) < 0.96)) | (dna & (rng.random(n_v) < 0.3))
    iv = np.flatnonzero(invoiced)
    n_i = len(iv)
    fees = np.array([s.fee_cents for s in cat.SERVICES])
    missed = dna[iv]
    fee = np.where(missed, cat.MISSED_APPOINTMENT_FEE[1], fees[service[iv]])
    extra = ~missed & (rng.random(n_i) < 0.12)
    extra_item = rng.integers(0, len(cat.EXTRA_ITEMS), n_i)
    extra_price = np.where(extra, np.array([p for _, p in cat.EXTRA_ITEMS])[extra_item], 0)
    total = fee + extra_price
    age = -day[iv]
    # open / paid / closed / void: recent invoices are often open, a few stay open for
    # months (the billing worklist), old ones are settled or written off (closed).
    inv_status = np.select(
        [age <= 30, age <= 60],
        [rng.choice(4, n_i, p=(0.25, 0.72, 0.0, 0.03)),
         rng.choice(4, n_i, p=(0.05, 0.90, 0.02, 0.03))],
        rng.choice(4, n_i, p=(0.005, 0.92, 0.05, 0.025)),
    )
    partial = (inv_status == 0) & (rng.random(n_i) < 0.4)
    paid = np.select(
        [inv_status == 0, inv_status == 3],
        [np.where(partial, (total * rng.uniform(0.2, 0.8, n_i)).astype(np.int64), 0), 0],
        total,
    )
    inv_index = clinic.next_index("invoices", n_i)
    inv_ids = _ids("invoices", inv_index, (age > LEGACY_DAYS))
    # Cliniko: 10 open, 20 paid, 30 closed, 40 open credit; a void invoice is deleted.
    cliniko_status = np.select([inv_status == 0, inv_status == 1], [10, 20], 30)
    # 40, Open (credit): paid, with more paid than the total (a credit), so nothing owed.
    cliniko_status = np.where((inv_status == 1) & (rng.random(n_i) < 0.1), 40, cliniko_status)
    cliniko_status = np.where(inv_status == 3, 10, cliniko_status)
    deleted_at = np.minimum(starts[iv] + rng.integers(DAY, 20 * DAY, n_i), now - 60)
    invoices = pl.DataFrame({
        "invoice_id": inv_ids,
        "patient_id": patient_ids.gather(vp[iv]),
        "issue_date": _dates(today + day[iv]),
        "total_amount": total,
        "status": _lookup(INVOICE_STATUSES, inv_status),
        "amount_paid": paid,
        "appointment_id": appt_ids.gather(iv),
        "case_id": vcase_ids.gather(iv),
        "practitioner_id": vprac_ids.gather(iv),
        "_cliniko_status": cliniko_status,
        "_deleted_at": _timestamps(deleted_at, inv_status == 3),
    })
    item_names = [s.name for s in cat.SERVICES] + [cat.MISSED_APPOINTMENT_FEE[0]]
    invoice_items = pl.concat([
        pl.DataFrame({
            "invoice_id": inv_ids,
            "item_name": _lookup(item_names, np.where(missed, len(cat.SERVICES), service[iv])),
            "quantity": np.ones(n_i, dtype=np.int64),
            "unit_price": fee,
        }),
        pl.DataFrame({
            "invoice_id": inv_ids.filter(pl.Series(extra)),
            "item_name": _lookup([name for name, _ in cat.EXTRA_ITEMS], extra_item[extra]),
            "quantity": np.ones(int(extra.sum()), dtype=np.int64),
            "unit_price": extra_price[extra],
        }),
    ])

    # ---- cases
    n_k = len(case_rows)
    in_case = vcase >= 0
    case_last = _group_reduce(np.maximum, n_k, vcase[in_case], day[in_case], -(10**6))
    case_future = _group_reduce(np.maximum, n_k, vcase[in_case],
                                (day[in_case] >= 0).astype(np.int64), 0) > 0
    c_expiry, c_issue = expiry[case_rows], issue[case_rows]
    u = rng.random(n_k)
    closed = ((c_expiry < 0) & (u < 0.7)) | ((case_last < -30) & ~case_future & (u < 0.35))
    closed_day = np.minimum(np.maximum(case_last, c_issue) + rng.integers(1, 31, n_k), -1)
    closed_at = np.minimum((today + closed_day) * DAY + rng.integers(0, 8 * HOUR, n_k),
                           now - 60)
    ref_names = [r.referral_type for r in cat.REFERRALS]
    kind_names = [k.category for k in kinds]
    gp = rng.integers(0, len(cat.GPS), n_k)
    issue_year = (np.datetime64("1970-01-01") + (today + c_issue).astype("timedelta64[D]")
                  ).astype("datetime64[Y]").astype(np.int64) + 1970
    cases = pl.DataFrame({
        "case_id": case_ids,
        "patient_id": patient_ids.gather(cp[case_rows]),
        "name": pl.select(pl.format(
            "{} {} {}", _lookup(ref_names, referral[case_rows]),
            _lookup(kind_names, kind[case_rows]), pl.Series(issue_year),
        )).to_series(),
        "issue_date": _dates(today + c_issue),
        "expiry_date": _dates(today + c_expiry),
        "max_sessions": max_sessions[case_rows],
        "max_invoiceable_amount": max_sessions[case_rows] * fees[next_service[case_rows]],
        "closed": closed,
        "closed_at": _timestamps(closed_at, closed),
        "referral_type": _lookup(ref_names, referral[case_rows]),
        "referring_provider": _lookup(GP_NAMES, gp),
        "_contact_id": clinic.contacts["contact_id"].gather(gp),
    })

    leads = pl.DataFrame({
        "lead_id": pl.Series(clinic.next_index("leads", n_l) + 1),
        "patient_id": patient_ids.gather(lead_rows),
        "campaign_name": _lookup([c.name for c in campaigns], lead_campaign),
        "created_at": _timestamps(lead_created),
        "owner": _lookup(list(cat.STAFF) + [None],
                         np.where(rng.random(n_l) < 0.12, len(cat.STAFF),
                                  rng.integers(0, len(cat.STAFF), n_l))),
        "status": _lookup(LEAD_STATUSES, lead_status),
        "procedure_of_interest": procedure_of_interest,
        "source": _lookup([c.source for c in campaigns], lead_campaign),
    })

    diagnoses = _diagnoses_frame(rng, patient_ids, main_kind, has_visits, first_start)
    waitlist = _waitlist_frame(clinic, rng, patient_ids, main_kind, home, status, now)
    opt_outs = _opt_outs_frame(rng, patient_ids, created_at, now)
    return {
        "patients": patients, "appointments": appointments, "invoices": invoices,
        "invoice_items": invoice_items, "cases": cases, "leads": leads,
        "diagnoses": diagnoses, "waitlist": waitlist, "opt_outs": opt_outs,
    }


def _ragged_pick(rng: np.random.Generator, groups: tuple[tuple[str, ...], ...],
                 group: np.ndarray) -> tuple[pl.Series, np.ndarray]:
    """One random member of groups[group[i]] per row, and its index in the flat list."""
    flat = [item for g in groups for item in g]
    count = np.array([len(g) for g in groups])
    offset = np.cumsum(count) - count
    idx = offset[group] + (rng.random(len(group)) * count[group]).astype(np.int64)
    return _lookup(flat, idx), idx


def _patients_frame(clinic: _Clinic, rng: np.random.Generator, n: int, patient_ids: pl.Series,
                    home: np.ndarray, prospect: np.ndarray, status: np.ndarray,
                    created_at: np.ndarray, archived: np.ndarray,
                    archived_day: np.ndarray) -> pl.DataFrame:
    today = clinic.as_of_day
    sex_u = rng.random(n)
    female = sex_u < 0.56
    first = np.where(female,
                     np.array(cat.FEMALE_NAMES)[rng.integers(0, len(cat.FEMALE_NAMES), n)],
                     np.array(cat.MALE_NAMES)[rng.integers(0, len(cat.MALE_NAMES), n)])
    last = np.array(cat.LAST_NAMES)[rng.integers(0, len(cat.LAST_NAMES), n)]

    child = rng.random(n) < 0.07
    # The uniform part keeps birthdays spread over the year where the clip bites.
    adult = np.clip(rng.normal(47, 17, n), 18, 94) + rng.random(n)
    age_years = np.where(child, rng.uniform(5, 18, n), adult)
    dob = today - (age_years * 365.2425).astype(np.int64)
    # Born at least two years before their first contact with the clinic.
    dob = np.minimum(dob, created_at // DAY - 730)
    # A few leap-day birthdays, which date arithmetic downstream must handle.
    years = dob.astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64)
    leap_years = years - (years + 1970) % 4
    feb29 = leap_years.astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64) + 59
    dob = np.where(rng.random(n) < 0.004, feb29, dob)
    dob_known = rng.random(n) >= np.where(prospect, 0.4, 0.04)

    has_email = rng.random(n) >= 0.12
    has_mobile = rng.random(n) >= 0.09
    has_home_phone = rng.random(n) < 0.25
    has_work_phone = rng.random(n) < 0.05
    has_address = rng.random(n) >= np.where(prospect, 0.6, 0.02)
    has_coords = has_address & (rng.random(n) >= 0.03)
    unit = rng.random(n) < 0.15
    suburb, suburb_idx = _ragged_pick(
        rng, tuple(tuple(s for s, _ in site.suburbs) for site in cat.SITES), home)
    post_codes = [pc for site in cat.SITES for _, pc in site.suburbs]

    # Home within ~15 km of the home site: uniform over the disc.
    radius_km = 15 * np.sqrt(rng.random(n))
    theta = rng.uniform(0, 2 * np.pi, n)
    site_lat = np.array([s.latitude for s in cat.SITES])[home]
    site_lon = np.array([s.longitude for s in cat.SITES])[home]
    lat = site_lat + radius_km * np.cos(theta) / 111.32
    lon = site_lon + radius_km * np.sin(theta) / (111.32 * np.cos(np.radians(site_lat)))

    referral_source = _weighted(rng, cat.REFERRAL_SOURCES, n)
    gp_referred = referral_source == [s for s, _ in cat.REFERRAL_SOURCES].index("GP referral")
    gp = rng.integers(0, len(cat.GPS), n)
    consent = ([True, False, None], (0.86, 0.09, 0.05))
    area = _lookup([s.area_code for s in cat.SITES], home)
    frame = pl.DataFrame({
        "first": first, "last": last,
        "m1": _digits(rng.integers(0, 100, n), 2), "m2": _digits(rng.integers(0, 1000, n), 3),
        "m3": _digits(rng.integers(0, 1000, n), 3),
        "h1": _digits(rng.integers(0, 1000, n), 3), "h2": _digits(rng.integers(0, 10000, n), 4),
        "w1": _digits(rng.integers(0, 1000, n), 3), "w2": _digits(rng.integers(0, 10000, n), 4),
        "area": area,
        "domain": _lookup(cat.EMAIL_DOMAINS, rng.integers(0, len(cat.EMAIL_DOMAINS), n)),
        "tag": pl.Series(rng.integers(1, 100, n)).cast(pl.String),
        "street_no": pl.Series(rng.integers(1, 250, n)).cast(pl.String),
        "unit_no": pl.Series(rng.integers(1, 40, n)).cast(pl.String),
        "street": _lookup(cat.STREETS, rng.integers(0, len(cat.STREETS), n)),
        "street_type": _lookup(cat.STREET_TYPES, rng.integers(0, len(cat.STREET_TYPES), n)),
    })
    email_name = pl.concat_str(
        [pl.col("first"), pl.lit("."), pl.col("last").str.replace_all("'", ""), pl.col("tag")]
    ).str.to_lowercase()
    street = pl.format("{} {} {}", "street_no", "street", "street_type")

    def when(mask: np.ndarray, expr: pl.Expr) -> pl.Expr:
        return pl.when(pl.Series(mask)).then(expr)

    return frame.select(
        patient_ids.alias("patient_id"),
        pl.col("first").alias("first_name"),
        pl.col("last").alias("last_name"),
        _dates(dob, dob_known).alias("date_of_birth"),
        _lookup(["Female", "Male", None],
                np.where(sex_u > 0.99, 2, np.where(female, 0, 1))).alias("sex"),
        when(has_email, pl.concat_str([email_name, pl.lit("@"), pl.col("domain")])).alias("email"),
        when(has_mobile, pl.format("04{} {} {}", "m1", "m2", "m3")).alias("mobile"),
        pl.Series(has_mobile & (rng.random(n) < 0.3)).alias("has_whatsapp"),
        when(has_address, pl.when(pl.Series(unit)).then(pl.format("Unit {}/{}", "unit_no", street))
             .otherwise(street)).alias("address"),
        when(has_address, suburb).alias("city"),
        when(has_address, _lookup([s.state for s in cat.SITES], home)).alias("state"),
        when(has_address, _lookup(post_codes, suburb_idx)).alias("post_code"),
        when(has_address, pl.lit("Australia")).alias("country"),
        when(has_coords, pl.Series(lat.round(FLOAT_DECIMALS))).alias("latitude"),
        when(has_coords, pl.Series(lon.round(FLOAT_DECIMALS))).alias("longitude"),
        _lookup([s for s, _ in cat.REFERRAL_SOURCES], referral_source).alias("referral_source"),
        when(gp_referred, _lookup(GP_NAMES, gp))
        .alias("referring_provider"),
        # The referring doctor's Cliniko contact (contact ids are 1.. in GPS order).
        when(gp_referred, pl.Series(gp + 1)).alias("_contact_id"),
        _lookup([p for p, _ in cat.INSURANCE_PLANS],
                _weighted(rng, cat.INSURANCE_PLANS, n)).alias("insurance_plan"),
        _lookup(PATIENT_STATUSES, status).alias("status"),
        pl.Series(consent[0], dtype=pl.Boolean)
        .gather(rng.choice(3, n, p=consent[1])).alias("accepted_email_marketing"),
        pl.Series(consent[0], dtype=pl.Boolean)
        .gather(rng.choice(3, n, p=consent[1])).alias("accepted_sms_marketing"),
        _timestamps(created_at).alias("created_at"),
        when(has_home_phone, pl.format("({}) 9{} {}", "area", "h1", "h2")).alias("_home_phone"),
        when(has_work_phone, pl.format("({}) 8{} {}", "area", "w1", "w2")).alias("_work_phone"),
        _timestamps((today + archived_day) * DAY + rng.integers(0, 8 * HOUR, n), archived)
        .alias("_archived_at"),
    )


def _diagnoses_frame(rng: np.random.Generator, patient_ids: pl.Series, main_kind: np.ndarray,
                     has_visits: np.ndarray, first_start: np.ndarray) -> pl.DataFrame:
    n = len(patient_ids)
    coded = has_visits & (rng.random(n) < 0.45)
    n_codes = coded * (1 + (rng.random(n) < 0.4) + (rng.random(n) < 0.15))
    dp = np.repeat(np.arange(n), n_codes)
    cpt = rng.random(len(dp)) < 0.25
    icd_code, _ = _ragged_pick(rng, cat.ICD10_BY_KIND, main_kind[dp])
    cpt_code, _ = _ragged_pick(rng, cat.CPT_BY_KIND, main_kind[dp])
    return pl.DataFrame({
        "patient_id": patient_ids.gather(dp),
        "code_system": _lookup(["ICD-10", "CPT"], cpt.astype(np.int64)),
        "code": pl.select(pl.when(pl.Series(cpt)).then(cpt_code).otherwise(icd_code))
        .to_series(),
        "recorded_at": _timestamps(first_start[dp] + 30 * 60),
    }).unique(subset=["patient_id", "code_system", "code"], keep="first", maintain_order=True)


def _waitlist_frame(clinic: _Clinic, rng: np.random.Generator, patient_ids: pl.Series,
                    main_kind: np.ndarray, home: np.ndarray, status: np.ndarray,
                    now: int) -> pl.DataFrame:
    n = len(patient_ids)
    rows = np.flatnonzero((status == PATIENT_STATUSES.index("active")) & (rng.random(n) < 0.035))
    n_w = len(rows)
    kinds = cat.COURSE_KINDS
    des_names = [d for d, _ in cat.DESIGNATIONS]
    designation = np.array([des_names.index(k.designation) for k in kinds])[main_kind[rows]]
    prac = clinic.pick_practitioners(rng, designation, home[rows], np.zeros(n_w, np.int64))
    service = np.array([cat.SERVICE_INDEX[k.next_service] for k in kinds])[main_kind[rows]]
    added = now - rng.integers(HOUR, 120 * DAY, n_w)
    removed = np.minimum(added + rng.integers(DAY, 30 * DAY, n_w), now - 60)
    is_removed = (rng.random(n_w) < 0.4) & (removed > added)
    return pl.DataFrame({
        "waitlist_id": pl.Series(clinic.next_index("waitlist", n_w) + 1),
        "patient_id": patient_ids.gather(rows),
        "appointment_type_id": clinic.type_ids.gather(service),
        "practitioner_id": _nullable(clinic.prac_ids.gather(prac), rng.random(n_w) < 0.5),
        "location_id": clinic.location_ids.gather(home[rows]),
        "added_at": _timestamps(added),
        "removed_at": _timestamps(removed, is_removed),
    })


OPT_OUT_CHANNELS = (("sms", 0.40), ("email", 0.35), ("all", 0.18), ("whatsapp", 0.07))
OPT_OUT_SOURCES = ("SMS STOP reply", "Unsubscribe link", "Front desk request", "WhatsApp block")


def _opt_outs_frame(rng: np.random.Generator, patient_ids: pl.Series, created_at: np.ndarray,
                    now: int) -> pl.DataFrame:
    n = len(patient_ids)
    rows = np.flatnonzero(rng.random(n) < 0.05)
    channel = _weighted(rng, OPT_OUT_CHANNELS, len(rows))
    since = created_at[rows]
    at = since + (rng.random(len(rows)) * np.maximum(now - since, 0)).astype(np.int64)
    return pl.DataFrame({
        "patient_id": patient_ids.gather(rows),
        "channel": _lookup([c for c, _ in OPT_OUT_CHANNELS], channel),
        "opted_out_at": _timestamps(at),
        "source": _lookup(OPT_OUT_SOURCES, channel),
    })


def generate_clinic(
    patients: int,
    out_dir: Path,
    *,
    seed: int = 42,
    fmt: str = "csv",
    as_of: date | None = None,
    progress: Callable[[str], None] | None = None,
) -> GenerationSummary:
    """Write a synthetic clinic group with `patients` patients (prospects included).

    Same seed, as-of date and patient count give byte-identical files.
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise ValueError(f"patients must be a whole number of at least 1, got {patients!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown extract format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}")
    if isinstance(as_of, datetime):
        as_of = as_of.date()
    if as_of is None:
        as_of = datetime.now(UTC).date()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    clinic = _build_clinic(patients, seed, as_of)
    names = tuple(e.name for e in ENTITIES)
    if fmt == "csv":
        sink: CsvSink | ClinikoSink = CsvSink(out_dir, names)
    else:
        sink = ClinikoSink(out_dir, names, clinic.contacts)
    sink.write("locations", clinic.locations)
    sink.write("practitioners", clinic.practitioners)
    sink.write("appointment_types", clinic.appointment_types)
    for chunk_no, first in enumerate(range(0, patients, CHUNK_PATIENTS)):
        n = min(CHUNK_PATIENTS, patients - first)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(chunk_no,)))
        for name, frame in _generate_chunk(clinic, rng, first, n).items():
            sink.write(name, frame)
        if progress is not None:
            progress(f"generated {first + n:,}/{patients:,} patients "
                     f"({clinic.counters.get('appointments', 0):,} appointments)")
    rows = sink.close()
    return GenerationSummary(rows=rows, out_dir=out_dir, fmt=fmt, as_of=as_of,
                             seconds=time.perf_counter() - started)

