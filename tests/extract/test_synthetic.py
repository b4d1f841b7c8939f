"""The synthetic clinic generator: well-formed extracts that look like a real clinic group.

One CSV generation of 2,000 patients and one Cliniko generation of 1,000 patients are
shared by the tests (module fixtures); each realism check is statistical on that data.
"""

from __future__ import annotations

import csv
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest

from extract.synthetic import GenerationSummary, generate_clinic
from ingest.entities import ENTITIES, Kind

AS_OF = date(2026, 11, 26)  # a Thursday
# The extract is taken at the start of the as-of day in Sydney: 26 Nov 2026 00:00 AEDT
# (UTC+11, daylight saving) is 25 Nov 2026 13:00 UTC. Nothing may be recorded after it.
EXTRACT_INSTANT = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
N_PATIENTS = 2_000
AU_ZONES = {"Australia/Sydney", "Australia/Melbourne", "Australia/Brisbane"}

TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|\+00:00)$"
DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
MONEY_RE = r"^\d+\.\d{2}$"


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> GenerationSummary:
    return generate_clinic(N_PATIENTS, tmp_path_factory.mktemp("csv"), seed=7, as_of=AS_OF)


@pytest.fixture(scope="module")
def raw(csv_run: GenerationSummary) -> dict[str, pl.DataFrame]:
    """Every file read as text, exactly as a CSV reader sees it."""
    return {
        e.name: pl.read_csv(csv_run.out_dir / e.file_name, infer_schema=False)
        for e in ENTITIES
    }


def _typed(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    spec = next(e for e in ENTITIES if e.name == name)
    exprs = []
    for col in spec.columns:
        c = pl.col(col.name)
        if col.kind is Kind.TIMESTAMP:
            c = c.str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC", strict=True)
        elif col.kind is Kind.DATE:
            c = c.str.to_date("%Y-%m-%d", strict=True)
        elif col.kind is Kind.BOOLEAN:
            c = c == "true"
        elif col.kind is Kind.MONEY:  # exact whole cents
            c = c.str.replace(".", "", literal=True).cast(pl.Int64)
        elif col.kind is Kind.INTEGER:
            c = c.cast(pl.Int64, strict=True)
        elif col.kind is Kind.FLOAT:
            c = c.cast(pl.Float64, strict=True)
        exprs.append(c.alias(col.name))
    return frame.select(exprs)


@pytest.fixture(scope="module")
def t(raw: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    return {name: _typed(frame, name) for name, frame in raw.items()}


@pytest.fixture(scope="module")
def appts(t: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Appointments with their class (docs/warehouse.md) and local start date and hour."""
    frame = t["appointments"].join(
        t["locations"].select("location_id", "time_zone"), on="location_id"
    ).join(t["appointment_types"].select("appointment_type_id", "category",
                                         "duration_minutes"), on="appointment_type_id")
    parts = []
    for zone in frame["time_zone"].unique():
        part = frame.filter(pl.col("time_zone") == zone)
        local = pl.col("starts_at").dt.convert_time_zone(zone)
        parts.append(part.with_columns(
            local.dt.date().alias("local_date"),
            local.dt.hour().alias("local_hour"),
            local.dt.minute().alias("local_minute"),
            local.dt.weekday().alias("local_weekday"),  # 1 = Monday ... 7 = Sunday
        ))
    frame = pl.concat(parts)
    cancelled = pl.col("cancelled_at").is_not_null()
    dna = ~cancelled & pl.col("did_not_arrive")
    return frame.with_columns(
        pl.when(cancelled).then(pl.lit("cancelled"))
        .when(dna).then(pl.lit("dna"))
        .when(pl.col("local_date") < AS_OF).then(pl.lit("attended"))
        .otherwise(pl.lit("upcoming")).alias("cls")
    )


@pytest.fixture(scope="module")
def last_attended(appts: pl.DataFrame) -> pl.DataFrame:
    return (appts.filter(pl.col("cls") == "attended").sort("starts_at")
            .group_by("patient_id").agg(pl.all().last()))


# ---------------------------------------------------------------------------------------
# well-formed files


# The canonical CSV extract, written out by hand from the documentation rather than from
# ENTITIES (which the generator itself writes its headers from). Sources:
# - the file list and the two required files: docs/extract-formats.md, "Canonical CSV";
# - the columns: the column tables of docs/extract-formats.md, "Cliniko API pages" (every
#   raw column the adapter fills, which for patients, locations, appointment_types,
#   appointments, cases, invoices and invoice_items is each one), the optional
#   `custom_fields` and `sessions_include_*` of "Canonical CSV", and the dbt staging models
#   (dbt_project/models/staging/stg_raw__<entity>.sql), which select every raw column by
#   name; leads, diagnoses, waitlist and opt_outs (no Cliniko endpoint) come from those
#   alone;
# - the order: docs/synthetic-data.md ("exactly the columns of ingest/entities.py, in that
#   order"), which is also the order the staging models select them in.
DOCUMENTED_CSV_HEADERS: dict[str, list[str]] = {
    "patients": [
        "patient_id", "first_name", "last_name", "date_of_birth", "sex", "email", "mobile",
        "has_whatsapp", "address", "city", "state", "post_code", "country", "latitude",
        "longitude", "referral_source", "referring_provider", "insurance_plan", "status",
        "accepted_email_marketing", "accepted_sms_marketing", "created_at", "custom_fields",
    ],
    "practitioners": [
        "practitioner_id", "first_name", "last_name", "designation", "active", "left_at",
    ],
    "locations": [
        "location_id", "name", "city", "state", "post_code", "latitude", "longitude",
        "time_zone",
    ],
    "appointment_types": ["appointment_type_id", "name", "category", "duration_minutes"],
    "appointments": [
        "appointment_id", "patient_id", "starts_at", "appointment_type_id", "practitioner_id",
        "location_id", "case_id", "ends_at", "created_at", "cancelled_at", "did_not_arrive",
        "patient_arrived",
    ],
    "invoices": [
        "invoice_id", "patient_id", "issue_date", "total_amount", "status", "amount_paid",
        "appointment_id", "case_id", "practitioner_id",
    ],
    "invoice_items": ["invoice_id", "item_name", "quantity", "unit_price"],
    "cases": [
        "case_id", "patient_id", "name", "issue_date", "expiry_date", "max_sessions",
        "max_invoiceable_amount", "closed", "closed_at", "referral_type",
        "referring_provider", "sessions_include_cancelled", "sessions_include_dna",
    ],
    "leads": [
        "lead_id", "patient_id", "campaign_name", "created_at", "owner", "status",
        "procedure_of_interest", "source",
    ],
    "diagnoses": ["patient_id", "code_system", "code", "recorded_at"],
    "waitlist": [
        "waitlist_id", "patient_id", "appointment_type_id", "practitioner_id", "location_id",
        "added_at", "removed_at",
    ],
    "opt_outs": ["patient_id", "channel", "opted_out_at", "source"],
}  # fmt: skip
# "Only `patients.csv` and `appointments.csv` must exist."
DOCUMENTED_REQUIRED_FILES = {"patients.csv", "appointments.csv"}
# Entities Cliniko does not have: canonical CSVs beside the endpoint folders.
DOCUMENTED_CSV_BESIDE_CLINIKO = ("leads", "diagnoses", "waitlist", "opt_outs")


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def test_entities_agree_with_the_documented_extract() -> None:
    assert [e.name for e in ENTITIES] == list(DOCUMENTED_CSV_HEADERS)
    assert {e.file_name for e in ENTITIES if e.file_required} == DOCUMENTED_REQUIRED_FILES
    for spec in ENTITIES:
        assert list(spec.column_names) == DOCUMENTED_CSV_HEADERS[spec.name], spec.name


def test_every_entity_file_has_the_documented_header(
    csv_run: GenerationSummary, raw: dict[str, pl.DataFrame]
) -> None:
    files = sorted(p.name for p in csv_run.out_dir.iterdir())
    assert files == sorted(f"{name}.csv" for name in DOCUMENTED_CSV_HEADERS)
    for name, columns in DOCUMENTED_CSV_HEADERS.items():
        assert _header(csv_run.out_dir / f"{name}.csv") == columns, name
        assert raw[name].height == csv_run.rows[name] > 0, name


def test_csv_files_beside_the_cliniko_pages_have_the_documented_header(
    cliniko_run: GenerationSummary,
) -> None:
    for name in DOCUMENTED_CSV_BESIDE_CLINIKO:
        assert _header(cliniko_run.out_dir / f"{name}.csv") == DOCUMENTED_CSV_HEADERS[name]


def test_values_are_well_formed_and_required_values_present(raw: dict[str, pl.DataFrame]) -> None:
    for spec in ENTITIES:
        frame = raw[spec.name]
        for col in spec.columns:
            values = frame[col.name].drop_nulls()
            if col.required:
                assert frame[col.name].null_count() == 0, (spec.name, col.name)
            pattern = {Kind.TIMESTAMP: TIMESTAMP_RE, Kind.DATE: DATE_RE, Kind.MONEY: MONEY_RE,
                       Kind.BOOLEAN: "^(true|false)$", Kind.INTEGER: r"^\d+$"}.get(col.kind)
            if pattern:
                bad = values.filter(~values.str.contains(pattern))
                assert bad.len() == 0, (spec.name, col.name, bad.head(3).to_list())
            if col.choices:
                assert set(values.unique()) <= set(col.choices), (spec.name, col.name)


def test_ids_are_unique(raw: dict[str, pl.DataFrame]) -> None:
    for spec in ENTITIES:
        if spec.key:
            assert raw[spec.name][spec.key].is_duplicated().sum() == 0, spec.name


def test_references_resolve(t: dict[str, pl.DataFrame]) -> None:
    def ids(name: str, column: str) -> set[str]:
        return set(t[name][column].drop_nulls())

    patients = ids("patients", "patient_id")
    for name in ("appointments", "invoices", "cases", "leads", "diagnoses", "waitlist",
                 "opt_outs"):
        assert ids(name, "patient_id") <= patients, name
    assert ids("appointments", "practitioner_id") <= ids("practitioners", "practitioner_id")
    assert ids("appointments", "appointment_type_id") <= ids(
        "appointment_types", "appointment_type_id")
    assert ids("appointments", "location_id") <= ids("locations", "location_id")
    assert ids("appointments", "case_id") <= ids("cases", "case_id")
    assert ids("invoices", "appointment_id") <= ids("appointments", "appointment_id")
    assert ids("invoices", "case_id") <= ids("cases", "case_id")
    assert ids("invoice_items", "invoice_id") == ids("invoices", "invoice_id")
    assert ids("waitlist", "practitioner_id") <= ids("practitioners", "practitioner_id")
    # A linked record belongs to the same patient as the record it links to.
    a = t["appointments"].select("appointment_id", "case_id", pl.col("patient_id").alias("ap"))
    inv = t["invoices"].join(a, on="appointment_id", how="left")
    assert (inv["patient_id"] == inv["ap"]).all()
    on_case = a.drop_nulls("case_id").join(t["cases"].select("case_id", "patient_id"),
                                           on="case_id")
    assert (on_case["ap"] == on_case["patient_id"]).all()


@pytest.mark.parametrize(("fmt", "n_files"), [("csv", 12), ("cliniko", 15 + 4)])
def test_same_seed_gives_identical_files_and_another_seed_does_not(
    tmp_path: Path, fmt: str, n_files: int
) -> None:
    # csv: one file per entity (12). cliniko: 15 endpoint folders (patients, archived;
    # practitioners, inactive; businesses; appointment_types; individual_appointments,
    # cancelled; attendees, cancelled; invoices, deleted; invoice_items; patient_cases;
    # contacts) and 4 canonical CSVs beside them (leads, diagnoses, waitlist, opt_outs).
    runs = [generate_clinic(300, tmp_path / name, seed=seed, as_of=AS_OF, fmt=fmt)
            for name, seed in (("a", 11), ("b", 11), ("c", 12))]

    def contents(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert len(list(runs[0].out_dir.iterdir())) == n_files
    first, again, other = (contents(r.out_dir) for r in runs)
    assert first == again
    assert first != other


def test_progress_reports_counts_per_chunk(tmp_path: Path) -> None:
    lines: list[str] = []
    generate_clinic(300, tmp_path, as_of=AS_OF, progress=lines.append)
    assert len(lines) == 1 and "300/300 patients" in lines[0]


def test_as_of_defaults_to_today_utc(tmp_path: Path) -> None:
    summary = generate_clinic(20, tmp_path)
    assert summary.as_of == datetime.now(UTC).date()
    assert summary.fmt == "csv" and summary.out_dir == tmp_path and summary.seconds >= 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"patients": 0}, "at least 1"), ({"patients": 10, "fmt": "xml"}, "csv, cliniko"),
     ({"patients": 10, "seed": -1}, "non-negative")],
)
def test_bad_arguments_are_explained(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_clinic(out_dir=tmp_path, **kwargs)


# ---------------------------------------------------------------------------------------
# the clinic group


def _km(lat1: np.ndarray, lon1: np.ndarray, lat2: float, lon2: float) -> np.ndarray:
    """Great-circle distance (haversine, earth radius 6371 km)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    h = (np.sin((p2 - p1) / 2) ** 2
         + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371 * np.arcsin(np.sqrt(h))


def test_sites_across_australian_time_zones_and_patients_live_near_one(
    t: dict[str, pl.DataFrame]
) -> None:
    loc = t["locations"]
    assert 4 <= loc.height <= 6
    assert set(loc["time_zone"]) <= AU_ZONES and len(set(loc["time_zone"])) >= 2
    assert loc["latitude"].null_count() == 0 and loc["post_code"].null_count() == 0
    p = t["patients"].drop_nulls("latitude")
    lat, lon = p["latitude"].to_numpy(), p["longitude"].to_numpy()
    nearest = np.min([_km(lat, lon, a, b) for a, b in loc.select("latitude", "longitude").rows()],
                     axis=0)
    # Homes are drawn within 15 km of their site; 0.2 km covers the 6-decimal rounding.
    assert nearest.max() <= 15.2
    assert np.median(nearest) > 3  # spread out, not piled on the clinic
    with_address = t["patients"].drop_nulls("address")
    assert with_address["post_code"].str.contains(r"^\d{4}$").all()
    assert set(with_address["state"]) <= {"NSW", "VIC", "QLD"}
    assert set(with_address["country"]) == {"Australia"}


def test_practitioners_scale_and_some_left_leaving_orphans(
    t: dict[str, pl.DataFrame], appts: pl.DataFrame, last_attended: pl.DataFrame
) -> None:
    prac = t["practitioners"]
    # ~1 per 1,500 patients, at least 8: 2,000 / 1,500 rounds to 1, so 8.
    assert prac.height == 8
    left = prac.filter(~pl.col("active"))
    assert left.height >= 1 and left["left_at"].null_count() == 0
    assert prac.filter(pl.col("active"))["left_at"].null_count() == prac["active"].sum()
    # Nobody sees a practitioner after they left.
    after = appts.join(left.select("practitioner_id", "left_at"), on="practitioner_id").filter(
        pl.col("starts_at") > pl.col("left_at"))
    assert after.height == 0
    orphans = last_attended.join(left.select("practitioner_id"), on="practitioner_id")
    assert orphans.height >= 10
    # Some are recent: still active patients, last seen within the year, nothing booked.
    booked = appts.filter(pl.col("cls") == "upcoming")["patient_id"]
    recent = orphans.filter((pl.col("local_date") >= AS_OF - timedelta(365))
                            & ~pl.col("patient_id").is_in(booked))
    assert recent.height >= 5


def test_appointment_types_cover_the_services(t: dict[str, pl.DataFrame]) -> None:
    types = t["appointment_types"]
    assert set(types["category"]) >= {"Physio", "Chiro", "Podiatry", "Massage", "Pilates",
                                      "Surgery", "Pre-op"}
    physio = set(types.filter(pl.col("category") == "Physio")["name"])
    assert any("Initial" in n for n in physio) and any("Follow-up" in n for n in physio)
    assert (types["duration_minutes"] > 0).all()


# ---------------------------------------------------------------------------------------
# visit patterns


def test_about_twenty_appointments_per_patient(t: dict[str, pl.DataFrame]) -> None:
    per_patient = t["appointments"].height / t["patients"].height
    assert 15 <= per_patient <= 25


def test_history_and_bookings_stay_within_the_window(appts: pl.DataFrame) -> None:
    # ~6 years back (6 x 365 days, + 2 days of weekday jitter), ~3 months ahead (90 + 2).
    assert appts["local_date"].min() >= AS_OF - timedelta(days=6 * 365 + 2)
    assert appts["local_date"].max() <= AS_OF + timedelta(days=92)
    future = appts.filter(pl.col("local_date") >= AS_OF)
    assert future.height > 100
    assert not future["did_not_arrive"].any() and not future["patient_arrived"].any()
    assert (appts["created_at"] <= EXTRACT_INSTANT).all()
    assert (appts.drop_nulls("cancelled_at")["cancelled_at"] <= EXTRACT_INSTANT).all()
    assert (appts["created_at"] <= appts["starts_at"]).all()
    cancelled = appts.drop_nulls("cancelled_at")
    assert (cancelled["created_at"] <= cancelled["cancelled_at"]).all()


def test_appointments_in_clinic_hours_local_time(appts: pl.DataFrame) -> None:
    # Weekdays 07:00-19:15 start, Saturday 08:00-12:00, never Sunday.
    assert (appts["local_weekday"] != 7).all()
    minutes = appts["local_hour"].cast(pl.Int32) * 60 + appts["local_minute"]
    assert minutes.min() >= 7 * 60 and minutes.max() <= 18 * 60 + 45
    sat = appts.filter(pl.col("local_weekday") == 6)
    assert sat.height > 0 and (sat["local_hour"] < 12).all()
    duration = (appts["ends_at"] - appts["starts_at"]).dt.total_minutes()
    assert (duration == appts["duration_minutes"]).all()
    # Stored as UTC: Sydney's 07:00-19:00 is 20:00-09:00 UTC, so UTC hours 10-18 never occur.
    utc_hours = set(appts["starts_at"].dt.hour())
    assert not utc_hours & set(range(10, 19))


def test_dnas_cancellations_and_frequent_no_shows(appts: pl.DataFrame) -> None:
    past = appts.filter(pl.col("local_date") < AS_OF)
    cancel_rate = past["cancelled_at"].is_not_null().mean()
    assert 0.03 <= cancel_rate <= 0.15
    booked = past.filter(pl.col("cancelled_at").is_null())
    assert 0.01 <= booked["did_not_arrive"].mean() <= 0.10
    late = appts.drop_nulls("cancelled_at").filter(
        pl.col("starts_at") - pl.col("cancelled_at") < timedelta(hours=24))
    assert late.height >= 20
    by_patient = booked.group_by("patient_id").agg(
        pl.col("did_not_arrive").sum().alias("dna"), pl.len().alias("n"))
    frequent = by_patient.filter((pl.col("dna") >= 3) & (pl.col("dna") / pl.col("n") >= 0.15))
    assert frequent.height >= 10


def test_courses_weekly_fortnightly_monthly(appts: pl.DataFrame) -> None:
    gaps = (appts.filter(pl.col("cls") == "attended").sort("patient_id", "starts_at")
            .with_columns(pl.col("local_date").diff().over("patient_id").dt.total_days()
                          .alias("gap"))
            .drop_nulls("gap").filter(pl.col("gap") > 0))
    share = {
        label: gaps.filter(pl.col("gap").is_between(lo, hi)).height / gaps.height
        for label, lo, hi in (("weekly", 6, 8), ("fortnightly", 13, 15), ("monthly", 27, 29))
    }
    assert share["weekly"] > 0.2 and share["fortnightly"] > 0.1 and share["monthly"] > 0.05


def test_patient_lifecycles(t: dict[str, pl.DataFrame], appts: pl.DataFrame,
                            last_attended: pl.DataFrame) -> None:
    p = t["patients"]
    assert set(p["status"]) == {"active", "inactive", "archived", "prospect"}
    n = p.height
    # dormant: last attended visit more than two years ago
    dormant = last_attended.filter(pl.col("local_date") < AS_OF - timedelta(days=730))
    assert dormant.height / n >= 0.10
    # new patients: a single visit in the last 45 days and nothing booked since
    per = appts.group_by("patient_id").agg(pl.len().alias("n"),
                                           pl.col("local_date").max().alias("last"))
    new_single = per.filter((pl.col("n") == 1) & (pl.col("last") >= AS_OF - timedelta(45))
                            & (pl.col("last") < AS_OF))
    assert new_single.height >= 10
    # one-off visits years ago
    assert per.filter((pl.col("n") == 1) & (pl.col("last") < AS_OF - timedelta(365))).height > 10
    # prospects never had an appointment, and each came in through a lead
    prospects = set(p.filter(pl.col("status") == "prospect")["patient_id"])
    assert prospects and not prospects & set(appts["patient_id"])
    assert prospects <= set(t["leads"]["patient_id"])


def test_patients_have_real_world_gaps_and_features(t: dict[str, pl.DataFrame]) -> None:
    p = t["patients"]
    n = p.height
    for column in ("email", "mobile", "date_of_birth"):
        assert 0.02 <= p[column].null_count() / n <= 0.30, column
    emails = p["email"].drop_nulls()
    assert emails.str.contains(r"^[a-z.\-]+\d*@(mail\.)?example\.(com|net|org)$").all()
    assert p["mobile"].drop_nulls().str.contains(r"^04\d{2} \d{3} \d{3}$").all()
    assert p["has_whatsapp"].any()
    assert not p.filter(pl.col("mobile").is_null())["has_whatsapp"].any()
    dob = p["date_of_birth"].drop_nulls()
    assert ((dob.dt.month() == 2) & (dob.dt.day() == 29)).sum() >= 1
    # Birthdays spread over the year: ~1,900 dates over 366 month-days is ~5 a day; no
    # month-day may hold 1% (19) of them (a clamped age once piled them on the as-of day).
    assert dob.dt.strftime("%m-%d").value_counts()["count"].max() < 0.01 * dob.len()
    # Birthdays in the next 7 days (26 Nov - 2 Dec): same month-day within that span.
    upcoming = {(11, d) for d in range(26, 31)} | {(12, 1), (12, 2)}
    md = set(zip(dob.dt.month().to_list(), dob.dt.day().to_list(), strict=True))
    assert md & upcoming
    assert set(p["insurance_plan"].drop_nulls()) == {"Medibank", "Bupa", "HCF", "NIB", "DVA",
                                                     "none"}
    assert p["referral_source"].drop_nulls().n_unique() >= 5
    gp_referred = p.filter(pl.col("referral_source") == "GP referral")
    assert gp_referred["referring_provider"].null_count() == 0
    assert (~p["accepted_email_marketing"].drop_nulls()).sum() > 0
    assert (~p["accepted_sms_marketing"].drop_nulls()).sum() > 0
    assert (p["created_at"] <= EXTRACT_INSTANT).all()
    assert (p.drop_nulls("date_of_birth").select(
        pl.col("date_of_birth") < pl.col("created_at").dt.date()).to_series()).all()


def test_upcoming_surgery_consults_with_pre_op(appts: pl.DataFrame) -> None:
    upcoming = appts.filter(pl.col("cls") == "upcoming")
    consults = upcoming.filter((pl.col("category") == "Surgery")
                               & (pl.col("local_date") <= AS_OF + timedelta(14)))
    assert consults.height >= 5
    pre_op = set(upcoming.filter(pl.col("category") == "Pre-op")["patient_id"])
    with_pre_op = set(consults["patient_id"]) & pre_op
    assert with_pre_op and set(consults["patient_id"]) - pre_op  # some have one, some not


# ---------------------------------------------------------------------------------------
# money, cases, leads and the rest


def test_invoices(t: dict[str, pl.DataFrame], appts: pl.DataFrame) -> None:
    inv = t["invoices"]
    assert set(inv["status"]) == {"open", "paid", "closed", "void"}
    paid = inv.filter(pl.col("status") == "paid")
    assert (paid["amount_paid"] == paid["total_amount"]).all()
    assert (inv.filter(pl.col("status") == "void")["amount_paid"] == 0).all()
    open_ = inv.filter(pl.col("status") == "open")
    partial = open_.filter((pl.col("amount_paid") > 0)
                           & (pl.col("amount_paid") < pl.col("total_amount")))
    assert partial.height >= 10
    assert open_.filter(pl.col("issue_date") < AS_OF - timedelta(30)).height >= 10
    # Most attended visits are invoiced, on the visit's local date.
    attended = appts.filter(pl.col("cls") == "attended")
    joined = attended.join(inv, on="appointment_id", how="left")
    assert joined["invoice_id"].is_not_null().mean() >= 0.85
    billed = joined.drop_nulls("invoice_id")
    assert (billed["issue_date"] == billed["local_date"]).all()
    # The total is the sum of the lines.
    lines = t["invoice_items"].group_by("invoice_id").agg(
        (pl.col("quantity") * pl.col("unit_price")).sum().alias("lines"))
    check = inv.join(lines, on="invoice_id")
    assert check.height == inv.height
    assert (check["lines"] == check["total_amount"]).all()
    assert t["invoice_items"]["item_name"].n_unique() > len(set(appts["category"]))


def test_referral_cases(t: dict[str, pl.DataFrame], appts: pl.DataFrame) -> None:
    cases = t["cases"]
    assert set(cases["referral_type"]) == {"EPC", "DVA", "WorkCover"}
    epc = cases.filter(pl.col("referral_type") == "EPC")
    assert (epc["max_sessions"] == 5).all()
    # EPC: max invoiceable is five sessions at the follow-up fee, a whole-dollar fee
    # between the cheapest ($45) and dearest ($250) service.
    per_session = epc["max_invoiceable_amount"] / 5
    assert (epc["max_invoiceable_amount"] % 5 == 0).all()
    assert per_session.is_between(4500, 25000).all()
    assert (cases["expiry_date"] > cases["issue_date"]).all()
    assert (cases["closed"] == cases["closed_at"].is_not_null()).all()
    assert cases["closed"].any() and (~cases["closed"]).any()
    open_cases = cases.filter(~pl.col("closed"))
    soon = open_cases.filter(pl.col("expiry_date").is_between(AS_OF, AS_OF + timedelta(30)))
    assert soon.height >= 1
    linked = appts.drop_nulls("case_id").join(cases, on="case_id")
    assert linked["local_date"].is_between(linked["issue_date"], linked["expiry_date"]).all()
    done = linked.filter(pl.col("cls") == "attended").group_by("case_id").agg(
        pl.len().alias("done"))
    left = cases.join(done, on="case_id", how="left").with_columns(
        (pl.col("max_sessions") - pl.col("done").fill_null(0)).alias("left"))
    assert (left["left"] == 0).any() and (left["left"] == 1).any()
    # Invoiced against the case: non-void invoices whose case_id is the case.
    invoiced = t["invoices"].filter(pl.col("status") != "void").drop_nulls("case_id").group_by(
        "case_id").agg(pl.col("total_amount").sum().alias("invoiced"))
    pct = cases.join(invoiced, on="case_id").with_columns(
        (pl.col("invoiced") / pl.col("max_invoiceable_amount")).alias("pct"))
    assert (pct["pct"] >= 0.8).any()


def test_leads_from_named_campaigns(t: dict[str, pl.DataFrame], appts: pl.DataFrame) -> None:
    leads = t["leads"]
    names = set(leads["campaign_name"])
    assert {"Google Ads - Back pain", "Facebook - Pilates intro",
            "Referral partner - GP"} <= names
    seminars = {n for n in names if re.fullmatch(r"Knee pain seminar \d{4}-\d{2}", n)}
    assert seminars
    assert set(leads["status"]) == {"new", "contacted", "scheduled", "converted", "lost"}
    assert leads["owner"].drop_nulls().str.ends_with("@clinic.example").all()
    assert leads["procedure_of_interest"].null_count() == 0
    # Seminar attendees who never booked: prospects with a seminar lead, no appointments.
    prospects = t["patients"].filter(pl.col("status") == "prospect")
    never_booked = leads.filter(pl.col("campaign_name").is_in(list(seminars))).join(
        prospects, on="patient_id").filter(~pl.col("patient_id").is_in(appts["patient_id"]))
    assert never_booked.height >= 10
    assert (leads["created_at"] <= EXTRACT_INSTANT).all()


def test_waitlist_opt_outs_and_diagnoses(t: dict[str, pl.DataFrame]) -> None:
    wl = t["waitlist"]
    assert wl["removed_at"].null_count() > 0 and wl["removed_at"].is_not_null().any()
    removed = wl.drop_nulls("removed_at")
    assert (removed["removed_at"] > removed["added_at"]).all()
    opt = t["opt_outs"]
    assert {"sms", "email", "all"} <= set(opt["channel"])
    assert (opt["opted_out_at"] <= EXTRACT_INSTANT).all()
    dx = t["diagnoses"]
    assert set(dx["code_system"]) == {"ICD-10", "CPT"}
    icd = dx.filter(pl.col("code_system") == "ICD-10")["code"]
    cpt = dx.filter(pl.col("code_system") == "CPT")["code"]
    assert icd.str.contains(r"^[A-Z]\d{2}(\.[0-9A-Z]{1,4})?$").all()
    assert cpt.str.contains(r"^\d{5}$").all()


# ---------------------------------------------------------------------------------------
# Cliniko pages


@pytest.fixture(scope="module")
def cliniko_run(tmp_path_factory: pytest.TempPathFactory) -> GenerationSummary:
    return generate_clinic(1_000, tmp_path_factory.mktemp("cliniko"), seed=7, as_of=AS_OF,
                           fmt="cliniko")


def _records(root: Path, *paths: str) -> list[dict]:
    """All records of endpoint folders (`patients/archived` is the folder
    `patients_archived`, its records listed under `patients`), checking the page envelope
    on the way."""
    found = []
    for path in paths:
        key = path.split("/")[0]
        folder = root / path.replace("/", "_")
        bodies = [orjson.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"))]
        records = [r for body in bodies for r in body[key]]
        for i, body in enumerate(bodies):
            last = i == len(bodies) - 1
            assert body["total_entries"] == len(records)
            assert len(body[key]) == 100 or (last and len(body[key]) < 100)
            assert body["links"]["self"] == (
                f"https://api.au1.cliniko.com/v1/{path}?page={i + 1}&per_page=100")
            assert ("next" in body["links"]) == (not last)
        found += records
    return found


def _link_id(link: dict) -> str:
    return link["links"]["self"].rsplit("/", 1)[1]


def test_cliniko_pages(cliniko_run: GenerationSummary) -> None:
    root = cliniko_run.out_dir
    for beside in ("leads", "diagnoses", "waitlist", "opt_outs"):
        assert (root / f"{beside}.csv").exists()
    active = _records(root, "patients")
    archived = _records(root, "patients/archived")
    patients = active + archived
    assert len(patients) == 1_000 == cliniko_run.rows["patients"]
    ids = [p["id"] for p in patients]
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids)
    assert any(len(i) == 19 for i in ids) and any(len(i) <= 6 for i in ids)
    # Archived patients are listed by their own endpoint, and only there.
    assert archived and all(p["archived_at"] for p in archived)
    assert {p["archived_at"] for p in active} == {""}
    phones = [ph for p in patients for ph in p["patient_phone_numbers"]]
    assert {ph["phone_type"] for ph in phones} == {"Mobile", "Home", "Work"}
    assert any(not p["patient_phone_numbers"] for p in patients) or any(
        all(ph["phone_type"] != "Mobile" for ph in p["patient_phone_numbers"]) for p in patients)
    assert {type(p["accepted_sms_marketing"]) for p in patients} >= {bool}
    # Only documented fields: no coordinates, WhatsApp flag or insurance field; the fund is
    # a custom field, the referrer a link to a contact.
    assert not {"latitude", "longitude", "has_whatsapp", "insurance_plan",
                "referring_provider"} & set(patients[0])  # fmt: skip
    funds = [p["custom_fields"]["sections"][0]["fields"][0] for p in patients
             if p["custom_fields"]]  # fmt: skip
    assert funds and {f["name"] for f in funds} == {"Provider"}
    assert all([o["selected"] for o in f["options"]] == [True] for f in funds)
    contacts = {c["id"] for c in _records(root, "contacts")}
    referred = [p for p in patients if p["referring_doctor"]]
    assert referred and {_link_id(p["referring_doctor"]) for p in referred} <= contacts

    appointments = _records(root, "individual_appointments", "individual_appointments/cancelled")
    assert len(appointments) == cliniko_run.rows["appointments"]
    assert all(a["cancelled_at"] for a in _records(root, "individual_appointments/cancelled"))
    assert {a["cancelled_at"] for a in _records(root, "individual_appointments")} == {""}
    cases = {c["id"]: c for c in _records(root, "patient_cases")}
    assert {_link_id(a["patient"]) for a in appointments} <= set(ids)
    # A case names its sessions by attendee; each attendee's booking is an appointment.
    attendees = {a["id"]: a for a in _records(root, "attendees", "attendees/cancelled")}
    assert len(attendees) == len(appointments)
    named = [i for c in cases.values() for i in c["attendee_ids"]]
    assert named and set(named) <= set(attendees)
    assert {_link_id(attendees[i]["booking"]) for i in named} <= {a["id"] for a in appointments}

    invoices = _records(root, "invoices")
    deleted = _records(root, "invoices/deleted")
    assert {i["status"] for i in invoices} == {10, 20, 30, 40}
    assert deleted and all(i["deleted_at"] for i in deleted)
    assert all(isinstance(i["total_amount"], str)
               and re.fullmatch(r"\d+\.\d{1,2}", i["total_amount"]) for i in invoices)
    assert any(i["total_amount"].endswith(".0") for i in invoices)
    assert "amount_paid" not in invoices[0]
    items = _records(root, "invoice_items")
    assert len(items) == cliniko_run.rows["invoice_items"]
    assert {_link_id(i["invoice"]) for i in items} <= {i["id"] for i in invoices + deleted}

    case = next(iter(cases.values()))
    assert {"issue_date", "expiry_date", "max_sessions", "max_invoiceable_amount", "closed",
            "referral_type", "include_cancelled_attendees", "include_dna_attendees"} <= set(case)
    assert isinstance(case["max_invoiceable_amount"], str)
    assert {_link_id(c["contact"]) for c in cases.values()} <= contacts
    # Cliniko has no active field: inactive practitioners are their own endpoint.
    inactive = _records(root, "practitioners/inactive")
    assert inactive and "active" not in inactive[0]
    businesses = _records(root, "businesses")
    assert {b["time_zone_identifier"] for b in businesses} <= AU_ZONES
    assert {b["time_zone"] for b in businesses} <= {z.split("/")[1] for z in AU_ZONES}
    assert len(_records(root, "appointment_types")) >= 7


def test_cliniko_and_csv_describe_the_same_clinic(
    cliniko_run: GenerationSummary, tmp_path: Path
) -> None:
    csv = generate_clinic(1_000, tmp_path, seed=7, as_of=AS_OF)
    assert csv.rows == cliniko_run.rows
    csv_ids = set(pl.read_csv(tmp_path / "patients.csv", infer_schema=False)["patient_id"])
    assert csv_ids == {
        p["id"] for p in _records(cliniko_run.out_dir, "patients", "patients/archived")
    }
    # A case's referring provider is its Cliniko contact's first and last name.
    contacts = {c["id"]: f"{c['first_name']} {c['last_name']}"
                for c in _records(cliniko_run.out_dir, "contacts")}
    via_contact = {c["id"]: contacts[_link_id(c["contact"])]
                   for c in _records(cliniko_run.out_dir, "patient_cases")}
    csv_cases = pl.read_csv(tmp_path / "cases.csv", infer_schema=False)
    assert dict(zip(csv_cases["case_id"], csv_cases["referring_provider"], strict=True)) == (
        via_contact)
    # So is a patient's (their referring doctor's), and the insurer is the custom field.
    patients = _records(cliniko_run.out_dir, "patients", "patients/archived")
    csv_patients = pl.read_csv(tmp_path / "patients.csv", infer_schema=False)
    assert {p["id"]: contacts[_link_id(p["referring_doctor"])] for p in patients
            if p["referring_doctor"]} == dict(  # fmt: skip
        csv_patients.drop_nulls("referring_provider")
        .select("patient_id", "referring_provider").iter_rows()
    )
    fund = {p["id"]: p["custom_fields"]["sections"][0]["fields"][0]["options"][0]["name"]
            for p in patients if p["custom_fields"]}  # fmt: skip
    assert fund == dict(
        csv_patients.drop_nulls("insurance_plan").select("patient_id", "insurance_plan").iter_rows()
    )
    # An appointment's case is the case naming its attendee.
    case_of = {i: c["id"] for c in _records(cliniko_run.out_dir, "patient_cases")
               for i in c["attendee_ids"]}  # fmt: skip
    csv_appointments = pl.read_csv(tmp_path / "appointments.csv", infer_schema=False)
    assert case_of == dict(
        csv_appointments.drop_nulls("case_id").select("appointment_id", "case_id").iter_rows()
    )
