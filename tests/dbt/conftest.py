"""A tiny hand-written clinic in a real DuckDB file, built once per session with real dbt.

D = 2024-03-01 in Australia/Sydney (UTC+11, daylight time, from October to April;
UTC+10 in winter). Timestamps below are UTC, as the raw layer stores them; the local
date is noted where it matters.

Reference data: practitioners dr_a (active) and dr_b (left 2024-01-15); appointment
types t_phys (Physio), t_chiro (Chiro), t_pilates (Pilates); one location.

p1  regular physio patient, birthday today, 7 attended appointments on 6 dates (two on
    2 Feb), one cancelled, one DNA, an appointment at 13:30 UTC on 29 Feb that is
    00:30 on 1 March in Sydney (upcoming, not attended), two leads, waitlist, diagnoses.
p2  orphan: last seen by dr_b who has left; born 29 Feb 2000; unreachable; opted out.
p3  prospect with only a lead (created 28 Feb UTC = 29 Feb Sydney) and a waitlist entry.
p4  three visits (even number of gaps), a future DNA, a future cancellation, an
    upcoming visit; a referral case with invoices linked directly and via appointment.
p5  lapsed: one visit in August 2023 without practitioner or type.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from ingest.raw_tables import create_empty_raw_tables

DBT_PROJECT_DIR = Path(__file__).resolve().parents[2] / "dbt_project"
AS_OF = "2024-03-01"
CLINIC_TIMEZONE = "Australia/Sydney"

PRACTITIONERS = [
    {"practitioner_id": "dr_a", "first_name": "Ann", "last_name": "Able", "active": True},
    {
        "practitioner_id": "dr_b",
        "first_name": "Bob",
        "last_name": "Gone",
        "active": True,
        "left_at": "2024-01-15 00:00:00+00",
    },
]
LOCATIONS = [{"location_id": "loc1", "name": "Bondi", "time_zone": CLINIC_TIMEZONE}]
APPOINTMENT_TYPES = [
    {"appointment_type_id": "t_phys", "name": "Physio follow-up", "category": "Physio",
     "duration_minutes": 30},
    {"appointment_type_id": "t_chiro", "name": "Chiro adjustment", "category": "Chiro",
     "duration_minutes": 15},
    {"appointment_type_id": "t_pilates", "name": "Clinical pilates", "category": "Pilates",
     "duration_minutes": 60},
]

PATIENTS = [
    {
        "patient_id": "p1", "first_name": "Alice", "last_name": "Smith",
        "date_of_birth": "1980-03-01", "sex": "F", "email": "p1@example.com",
        "mobile": "0412 345 678", "has_whatsapp": True, "city": "Bondi", "state": "NSW",
        "post_code": "2026", "country": "AU", "latitude": -33.89, "longitude": 151.27,
        "referral_source": "Google", "insurance_plan": "Bupa", "status": "active",
        "accepted_email_marketing": True, "accepted_sms_marketing": True,
        "created_at": "2020-01-01 00:00:00+00",
        "custom_fields": '{"Referral / Source": "GP", "Insurance coverage / Provider": "Bupa"}',
    },
    {
        "patient_id": "p2", "first_name": "Ben", "last_name": "Jones",
        "date_of_birth": "2000-02-29", "sex": "M", "email": "bad-email", "mobile": "555 1234",
        "has_whatsapp": True, "state": "NSW", "referring_provider": "Dr Who",
        "status": "active", "accepted_email_marketing": False, "accepted_sms_marketing": True,
    },
    {
        "patient_id": "p3", "first_name": "Cara", "last_name": "Lee", "email": "lead@example.org",
        "status": "prospect", "referral_source": "Event",
    },
    {
        "patient_id": "p4", "first_name": "Dan", "last_name": "Wu", "date_of_birth": "1990-12-31",
        "email": " p4@clinic.example ", "mobile": "+61 400 000 000", "has_whatsapp": False,
        "status": "active", "post_code": "0800",
        "custom_fields": '["not", "an object"]',
    },
    {"patient_id": "p5", "first_name": "Eve", "last_name": "Moss", "status": "active"},
]


def appt(appointment_id: str, patient_id: str, starts_at: str, **extra: object) -> dict:
    row = {
        "appointment_id": appointment_id,
        "patient_id": patient_id,
        "starts_at": starts_at,
        "appointment_type_id": "t_phys",
        "practitioner_id": "dr_a",
        "location_id": "loc1",
    }
    row.update(extra)
    return row


APPOINTMENTS = [
    # p1 (local dates in Sydney, UTC+11)
    appt("a1", "p1", "2023-10-01 22:00:00+00"),  # 2 Oct
    appt("a2", "p1", "2023-11-01 23:00:00+00"),  # 2 Nov
    appt("a3", "p1", "2023-12-01 23:00:00+00"),  # 2 Dec
    appt("a4", "p1", "2024-01-05 23:00:00+00", appointment_type_id="t_chiro"),  # 6 Jan
    appt("a5", "p1", "2024-02-01 23:00:00+00"),  # 2 Feb 10:00
    appt("a6", "p1", "2024-02-02 03:00:00+00", appointment_type_id="t_pilates"),  # 2 Feb 14:00
    appt("a7", "p1", "2024-02-15 23:00:00+00"),  # 16 Feb
    appt("a8", "p1", "2024-02-29 13:30:00+00"),  # 1 Mar 00:30 = D: upcoming
    appt("a9", "p1", "2024-01-20 23:00:00+00", cancelled_at="2024-01-18 01:00:00+00"),
    appt("a10", "p1", "2024-01-25 23:00:00+00", did_not_arrive=True),
    appt("a11", "p1", "2024-03-10 23:00:00+00"),  # 11 Mar: upcoming, later than a8
    # p2, seen by dr_b who left on 15 Jan
    appt("b1", "p2", "2023-12-10 23:00:00+00", appointment_type_id="t_chiro",
         practitioner_id="dr_b", case_id="c2"),  # 11 Dec
    appt("b2", "p2", "2024-01-09 23:00:00+00", appointment_type_id="t_chiro",
         practitioner_id="dr_b"),  # 10 Jan
    # p4, all on case c3
    appt("d1", "p4", "2024-01-01 22:00:00+00", case_id="c3"),  # 2 Jan
    appt("d2", "p4", "2024-01-11 22:00:00+00", case_id="c3"),  # 12 Jan
    appt("d3", "p4", "2024-02-01 22:00:00+00", case_id="c3"),  # 2 Feb
    appt("d4", "p4", "2024-03-05 22:00:00+00", case_id="c3", did_not_arrive=True),  # future DNA
    appt("d5", "p4", "2024-03-12 22:00:00+00", case_id="c3"),  # upcoming
    appt("d6", "p4", "2024-03-08 22:00:00+00", case_id="c3",
         cancelled_at="2024-02-20 00:00:00+00"),
    # p5: 14 Aug 23:00 UTC is 15 Aug 09:00 in Sydney (UTC+10 in winter)
    appt("e1", "p5", "2023-08-14 23:00:00+00", appointment_type_id=None, practitioner_id=None),
]


def inv(invoice_id: str, patient_id: str, issue_date: str, status: str, total: str,
        paid: str | None = None, **extra: object) -> dict:
    row = {
        "invoice_id": invoice_id, "patient_id": patient_id, "issue_date": issue_date,
        "status": status, "total_amount": Decimal(total),
        "amount_paid": Decimal(paid) if paid is not None else None,
    }
    row.update(extra)
    return row


INVOICES = [
    inv("inv1", "p1", "2024-02-02", "open", "100.00", "40.00", practitioner_id="dr_a"),
    inv("inv2", "p1", "2023-12-02", "paid", "90.00"),
    inv("inv3", "p1", "2023-11-02", "void", "80.00"),
    inv("inv4", "p1", "2024-01-06", "closed", "70.00", "0.00"),
    inv("inv5", "p2", "2024-01-10", "open", "50.00"),
    inv("inv6", "p2", "2023-12-11", "open", "40.00", "40.00", case_id="c2"),
    inv("inv7", "p4", "2024-01-02", "paid", "85.00", appointment_id="d1"),  # case via d1
    inv("inv8", "p4", "2024-01-12", "open", "85.00", "85.00", case_id="c3"),
    inv("inv9", "p4", "2024-02-02", "void", "85.00", case_id="c3"),
]

CASES = [
    {"case_id": "c1", "patient_id": "p1", "name": "DVA shoulder", "issue_date": "2023-06-01",
     "expiry_date": "2024-06-01", "max_sessions": 0, "max_invoiceable_amount": Decimal("0.00")},
    {"case_id": "c2", "patient_id": "p2", "name": "WorkCover back", "issue_date": "2023-01-01",
     "closed": False, "closed_at": "2024-02-01 10:00:00+00", "referral_type": "WorkCover"},
    {"case_id": "c3", "patient_id": "p4", "name": "EPC knee", "issue_date": "2024-01-01",
     "expiry_date": "2024-03-20", "max_sessions": 5,
     "max_invoiceable_amount": Decimal("500.00"), "closed": False, "referral_type": "EPC",
     "referring_provider": "Dr GP"},
]

LEADS = [
    {"lead_id": "l1", "patient_id": "p1", "campaign_name": "Spring open day",
     "created_at": "2019-06-01 10:00:00+00", "owner": "sam", "status": "converted",
     "procedure_of_interest": "Physio assessment", "source": "event"},
    {"lead_id": "l2", "patient_id": "p1", "campaign_name": "Newsletter",
     "created_at": "2019-12-01 10:00:00+00", "owner": "kim", "status": "contacted",
     "procedure_of_interest": "Pilates", "source": "web"},
    # 28 Feb 14:00 UTC is 29 Feb 01:00 in Sydney
    {"lead_id": "l3", "patient_id": "p3", "campaign_name": "Knee clinic evening",
     "created_at": "2024-02-28 14:00:00+00", "owner": "sam", "status": "new",
     "procedure_of_interest": "ACL rehab", "source": "event"},
]

WAITLIST = [
    {"waitlist_id": "w1", "patient_id": "p1", "added_at": "2024-01-01 00:00:00+00",
     "removed_at": "2024-02-10 00:00:00+00"},
    {"waitlist_id": "w2", "patient_id": "p1", "added_at": "2024-02-01 00:00:00+00",
     "removed_at": "2024-03-05 00:00:00+00"},
    {"waitlist_id": "w3", "patient_id": "p3", "added_at": "2024-02-28 00:00:00+00"},
]

DIAGNOSES = [
    {"patient_id": "p1", "code_system": "ICD-10", "code": "M54.5",
     "recorded_at": "2023-10-02 00:00:00+00"},
    {"patient_id": "p1", "code_system": "CPT", "code": "97110",
     "recorded_at": "2023-10-02 00:00:00+00"},
    {"patient_id": "p1", "code_system": "ICD-10", "code": "M54.5",
     "recorded_at": "2023-11-02 00:00:00+00"},
]

OPT_OUTS = [
    {"patient_id": "p2", "channel": "sms", "opted_out_at": "2024-02-01 00:00:00+00"},
    {"patient_id": "p3", "channel": "all", "opted_out_at": "2024-03-05 00:00:00+00"},
]

RAW_ROWS: dict[str, list[dict]] = {
    "practitioners": PRACTITIONERS,
    "locations": LOCATIONS,
    "appointment_types": APPOINTMENT_TYPES,
    "patients": PATIENTS,
    "appointments": APPOINTMENTS,
    "invoices": INVOICES,
    "cases": CASES,
    "leads": LEADS,
    "waitlist": WAITLIST,
    "diagnoses": DIAGNOSES,
    "opt_outs": OPT_OUTS,
}


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> None:
    for number, row in enumerate(rows, start=2):
        values = {**row, "_source_file": f"{table}.csv", "_source_row": number}
        columns = ", ".join(f'"{c}"' for c in values)
        marks = ", ".join("?" for _ in values)
        con.execute(f"insert into raw.{table} ({columns}) values ({marks})", list(values.values()))


def build_tiny_raw_warehouse(path: Path) -> Path:
    con = duckdb.connect(str(path))
    try:
        con.execute("SET TimeZone = 'UTC'")
        create_empty_raw_tables(con)
        for table, rows in RAW_ROWS.items():
            insert_rows(con, table, rows)
    finally:
        con.close()
    return path


@dataclass(frozen=True)
class BuiltWarehouse:
    path: Path
    raw_only: Path  # a copy taken before dbt ran, for tests that build it their own way


def run_dbt(
    command: list[str], duckdb_path: Path, work_dir: Path, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """dbt as analysts run it, in its own process (dbt-duckdb keeps the database open for
    the life of the process that ran it)."""
    dbt = Path(sys.executable).parent / "dbt"
    env = {**os.environ, "DUCKDB_PATH": str(duckdb_path), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    variables = variables or {"as_of": AS_OF, "clinic_timezone": CLINIC_TIMEZONE}
    return subprocess.run(
        [
            str(dbt) if dbt.exists() else "dbt",
            *command,
            "--project-dir", str(DBT_PROJECT_DIR),
            "--profiles-dir", str(DBT_PROJECT_DIR),
            "--target-path", str(work_dir / "target"),
            "--log-path", str(work_dir / "logs"),
            "--vars", json.dumps(variables),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def run_dbt_build(duckdb_path: Path, work_dir: Path) -> None:
    completed = run_dbt(["build", "--exclude", "path:models/analytics"], duckdb_path, work_dir)
    if completed.returncode != 0:
        raise AssertionError(f"dbt build failed:\n{completed.stdout[-6000:]}\n{completed.stderr}")


@pytest.fixture(scope="session")
def tiny_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltWarehouse]:
    folder = tmp_path_factory.mktemp("dbt_warehouse")
    path = build_tiny_raw_warehouse(folder / "warehouse.duckdb")
    raw_only = folder / "raw_only.duckdb"
    shutil.copyfile(path, raw_only)
    run_dbt_build(path, folder)
    yield BuiltWarehouse(path=path, raw_only=raw_only)


@pytest.fixture(scope="session")
def marts(tiny_warehouse: BuiltWarehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(tiny_warehouse.path), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


@pytest.fixture
def dbt_cli(tmp_path: Path):
    """Run a dbt command on a given warehouse file: `dbt_cli(["build"], path, vars)`."""

    def _run(
        command: list[str], duckdb_path: Path, variables: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_dbt(command, duckdb_path, tmp_path, variables)

    return _run
