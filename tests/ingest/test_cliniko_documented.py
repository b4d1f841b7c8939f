"""`audiences run --format cliniko` on pages written from Cliniko's documented example
responses (tests/fixtures/cliniko_documented, see its README), checked against values
worked out by hand from what the documentation says the fields mean.

D = 2016-08-01, CLINIC_TIMEZONE = Australia/Melbourne (UTC+10 in winter), the time zone
the documented business gives.

Joe Monahan (82), the patient the documented appointment names:
  1   2016-07-21 03:45Z  Initial Consultation, Andy Savage (inactive)  attended
  10  2016-06-30 23:30Z  = 1 July 09:30 in Melbourne, Standard Consultation (an
                         archived type), Randy Savage                 attended
  13  2016-07-14         did not arrive
  11  2016-07-25         /individual_appointments/cancelled           cancelled
  12  2016-07-28         /individual_appointments/deleted             not a visit
  15  2016-07-08         archived_at set (Cliniko's older deletion)   not a visit
  -> 2 visits (not 4), first 1 July (local), last 21 July with a practitioner who is
     inactive and nothing booked: an orphan.
  invoices 110 (40 Open credit, 30.0), 111 (30 Closed, 20.0), 113 (10 Open, 45.5,
  issued 15 June), 112 (deleted, 50.0):
     lifetime 30 + 20 + 45.50 = 95.50 (the deleted one is void); paid 30 + 20 = 50.00;
     owed 45.50, open since 15 June = 47 days; average fee 95.50 / 2 = 47.75.

Peter Patientman (1), the documented patient:
  referred by contacts/1 Darrell Bode; custom field Insurance coverage / Provider:
  Super Insurance (radio button selected), Policy number ABC-12345.
  20 2016-07-05 attended, 21 cancelled (12 July), 22 did not arrive (19 July),
  23 deleted, 24 2016-08-09 02:00Z upcoming; all with Randy Savage (active).
  invoices 108 (10 Open, 90.0, 5 July, for appointment 20), 109 (20 Paid, 80.0):
     lifetime 170.00, paid 80.00, owed 90.00 for 27 days, average fee 170.00.
  Case One (the documented case): attendees of 20, 21, 22, 23 (deleted), 24;
  include_cancelled_attendees true, include_dna_attendees null ->
     done: 20 attended + 21 cancelled before D = 2 (22 is a DNA, not counted);
     booked: 20, 22, 24 (not cancelled) + 21 (cancelled, counted) = 4; left 12 - 2 = 10;
     invoiced: 108 via appointment 20 = 90.00; referrer contacts/2 Meredith Grey;
     open, 2017-02-17 - 2016-08-01 = 200 days to expiry.

Case Two (82): archived 2016-07-30 -> closed then; attendee of appointment 1 -> 1 done,
  1 booked, 6 - 1 = 5 left; invoiced: 110 via appointment 1 = 30.00.

Patients 5 (/patients/archived) is archived; 6 (/patients/deleted) and 7 (listed, then
deleted) are not patients of the clinic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.dbt

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cliniko_documented"
AS_OF = "2016-08-01"


def audiences(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "audiences")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=600)


def run_env(tmp_path: Path, zone: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DUCKDB_PATH": str(tmp_path / "warehouse.duckdb"),
        "STATE_DB_URL": f"sqlite:///{tmp_path / 'state.db'}",
        "CLINIC_TIMEZONE": zone,
        "OUTBOUND_SEND_DISABLED": "1",
    }
    for name in ("DAGSTER_HOME", "SEGMENTS_PATH", "CAMPAIGNS_PATH", "WORKLISTS_PATH"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cliniko-documented")
    done = audiences("run", "--extracts", str(FIXTURE), "--format", "cliniko",
                     "--as-of", AS_OF, env=run_env(tmp, "Australia/Melbourne"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp / "warehouse.duckdb"


def rows(path: Path, sql: str) -> list[dict]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def patient(path: Path, patient_id: str) -> dict:
    (row,) = rows(path, f"select * from marts.patient_features where patient_id = '{patient_id}'")
    return row


def pick(row: dict, *names: str) -> dict:
    return {name: row[name] for name in names}


VISITS = (
    "total_visits", "first_visit_date", "last_visit_date", "days_since_last_visit",
    "dna_count", "cancellation_count", "next_appointment_at", "last_practitioner_id",
    "last_practitioner_name", "last_practitioner_active", "last_appointment_type",
)  # fmt: skip
MONEY = ("lifetime_value", "total_paid", "balance_due", "oldest_open_invoice_days",
         "avg_visit_fee")  # fmt: skip


def test_deleted_and_archived_appointments_are_not_visits_and_dates_are_melbourne(warehouse):
    assert pick(patient(warehouse, "82"), *VISITS) == {
        "total_visits": 2,
        "first_visit_date": date(2016, 7, 1),  # 30 June 23:30 UTC is 1 July in Melbourne
        "last_visit_date": date(2016, 7, 21),
        "days_since_last_visit": 11,
        "dna_count": 1,
        "cancellation_count": 1,
        "next_appointment_at": None,
        "last_practitioner_id": "3",
        "last_practitioner_name": "Andy Savage",
        "last_practitioner_active": False,  # listed by /practitioners/inactive
        "last_appointment_type": "Initial Consultation",
    }
    assert pick(patient(warehouse, "1"), *VISITS) == {
        "total_visits": 1,
        "first_visit_date": date(2016, 7, 5),
        "last_visit_date": date(2016, 7, 5),
        "days_since_last_visit": 27,
        "dna_count": 1,
        "cancellation_count": 1,
        "next_appointment_at": datetime(2016, 8, 9, 2, 0, tzinfo=UTC),
        "last_practitioner_id": "514810972972521916",
        "last_practitioner_name": "Randy Savage",
        "last_practitioner_active": True,
        "last_appointment_type": "Initial Consultation",
    }
    assert rows(warehouse, "select appointment_id from marts.appointments order by 1") == [
        {"appointment_id": a} for a in ("1", "10", "11", "13", "20", "21", "22", "24")
    ]


def test_balances_follow_cliniko_invoice_statuses(warehouse):
    assert pick(patient(warehouse, "82"), *MONEY) == {
        "lifetime_value": Decimal("95.50"),
        "total_paid": Decimal("50.00"),
        "balance_due": Decimal("45.50"),
        "oldest_open_invoice_days": 47,
        "avg_visit_fee": Decimal("47.75"),
    }
    assert pick(patient(warehouse, "1"), *MONEY) == {
        "lifetime_value": Decimal("170.00"),
        "total_paid": Decimal("80.00"),
        "balance_due": Decimal("90.00"),
        "oldest_open_invoice_days": 27,
        "avg_visit_fee": Decimal("170.00"),
    }
    statuses = rows(warehouse, "select invoice_id, status, balance_due from marts.invoices "
                               "order by invoice_id")  # fmt: skip
    assert statuses == [
        {"invoice_id": "108", "status": "open", "balance_due": Decimal("90.00")},
        {"invoice_id": "109", "status": "paid", "balance_due": Decimal("0.00")},
        {"invoice_id": "110", "status": "paid", "balance_due": Decimal("0.00")},  # 40
        {"invoice_id": "111", "status": "closed", "balance_due": Decimal("0.00")},
        {"invoice_id": "112", "status": "void", "balance_due": Decimal("0.00")},  # deleted
        {"invoice_id": "113", "status": "open", "balance_due": Decimal("45.50")},
    ]


def test_invoice_items_are_loaded_and_a_deleted_one_is_not(warehouse):
    assert rows(warehouse, "select * from marts.invoice_items order by invoice_id") == [
        {"invoice_id": "108", "patient_id": "1", "issue_date": date(2016, 7, 5),
         "invoice_status": "open", "item_name": "Initial consultation and treatment",
         "quantity": 1.0, "unit_price": Decimal("100.00"), "line_amount": Decimal("100.00")},
        {"invoice_id": "109", "patient_id": "1", "issue_date": date(2016, 7, 1),
         "invoice_status": "paid", "item_name": "Follow-up consultation",
         "quantity": 2.0, "unit_price": Decimal("40.00"), "line_amount": Decimal("80.00")},
    ]  # fmt: skip
    (rejected,) = rows(warehouse, "select reason from raw.invoice_items__rejected")
    assert rejected["reason"].startswith("deleted in the practice-management system at 2016-07-06")


def test_referrers_custom_fields_and_insurance(warehouse):
    peter = patient(warehouse, "1")
    assert pick(peter, "referring_provider", "insurance_plan", "custom_fields") == {
        "referring_provider": "Darrell Bode",
        "insurance_plan": "Super Insurance",
        # "Section / Field: value", sorted, so segments can match them with contains_any.
        "custom_fields": ["Insurance coverage / Policy number: ABC-12345",
                          "Insurance coverage / Provider: Super Insurance"],
    }  # fmt: skip
    joe = patient(warehouse, "82")
    assert pick(joe, "referring_provider", "insurance_plan", "custom_fields") == {
        "referring_provider": None, "insurance_plan": None, "custom_fields": [],
    }


def test_case_sessions_count_attendees_with_the_include_flags(warehouse):
    cases = rows(warehouse, "select case_id, status, sessions_done, sessions_booked, "
                 "sessions_left, total_invoiced, referring_provider, days_until_expiry, "
                 "closed_at from marts.case_features order by case_id")  # fmt: skip
    assert cases == [
        {"case_id": "566562806174843905", "status": "open", "sessions_done": 2,
         "sessions_booked": 4, "sessions_left": 10, "total_invoiced": Decimal("90.00"),
         "referring_provider": "Meredith Grey", "days_until_expiry": 200, "closed_at": None},
        {"case_id": "566562806174843906", "status": "closed", "sessions_done": 1,
         "sessions_booked": 1, "sessions_left": 5, "total_invoiced": Decimal("30.00"),
         "referring_provider": None, "days_until_expiry": 200,
         "closed_at": datetime(2016, 7, 30, 1, 0, tzinfo=UTC)},
    ]  # fmt: skip


def test_patients_archived_deleted_and_the_business_time_zone(warehouse):
    assert rows(warehouse, "select patient_id, status from marts.patient_features "
                           "order by patient_id") == [  # fmt: skip
        {"patient_id": "1", "status": "active"},
        {"patient_id": "5", "status": "archived"},
        {"patient_id": "82", "status": "active"},
    ]
    assert rows(warehouse, "select location_id, time_zone from raw.locations") == [
        {"location_id": "514810976554457178", "time_zone": "Australia/Melbourne"}
    ]


def test_orphans_and_debtors_are_the_segments_members(warehouse):
    members = rows(warehouse, "select segment_slug, patient_id from segments.membership "
                   "where segment_slug in ('orphaned-patients', 'invoices-outstanding-30d') "
                   "order by 1, 2")  # fmt: skip
    # Joe's last practitioner is inactive and he has nothing booked; he owes 45.50 for 47
    # days. Peter's 90.00 is 27 days old.
    assert members == [
        {"segment_slug": "invoices-outstanding-30d", "patient_id": "82"},
        {"segment_slug": "orphaned-patients", "patient_id": "82"},
    ]


def test_a_clinic_time_zone_other_than_the_business_is_warned_about(tmp_path):
    done = audiences("run", "--extracts", str(FIXTURE), "--format", "cliniko", "--as-of",
                     AS_OF, "--select", "raw", env=run_env(tmp_path, "UTC"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = " ".join((done.stdout + done.stderr).split())
    assert "the extract's locations are in Australia/Melbourne, but dates are taken in " \
           "CLINIC_TIMEZONE=UTC" in text  # fmt: skip
