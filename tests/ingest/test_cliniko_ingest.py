"""Cliniko API pages: ids, links, phones, money and statuses, worked out by hand."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from ingest.csv_reader import ExtractFileError

BASE = "https://api.au1.cliniko.com/v1"


def page(resource: str, records: list, total: int | None = None) -> str:
    total = len(records) if total is None else total
    return json.dumps({resource: records, "total_entries": total, "links": {"self": "x"}})


def link(kind: str, ident: str) -> dict:
    return {"links": {"self": f"{BASE}/{kind}/{ident}"}}


@pytest.fixture
def cliniko_extract(write):
    write(
        "patients/page-00001.json",
        # Ids written as a bare 19-digit JSON number must survive exactly (a float would
        # turn 1234567890123456789 into 1234567890123456768).
        '{"patients": [{"id": 1234567890123456789, "first_name": "Ann", "archived_at": "",'
        ' "date_of_birth": "1980-02-29", "email": "",'
        ' "patient_phone_numbers": [{"phone_type": "Home", "number": "02 9999 0000"},'
        ' {"phone_type": "Mobile", "number": "0412 345 678"}],'
        ' "accepted_email_marketing": true, "accepted_sms_marketing": false,'
        ' "address_1": "Unit 2", "address_2": "10 Pitt St", "address_3": "",'
        ' "created_at": "2024-01-02T03:04:05Z"}], "total_entries": 2, "links": {}}',
    )
    write(
        "patients/page-00002.json",
        page(
            "patients",
            [
                {
                    "id": "82",
                    "first_name": "Bo",
                    "archived_at": "2025-01-01T00:00:00Z",
                    "patient_phone_numbers": [],
                }
            ],
            total=2,  # both pages say the list holds 2
        ),
    )
    write(
        "individual_appointments/page-00001.json",
        page(
            "individual_appointments",
            [
                {
                    "id": "5001",
                    "starts_at": "2026-03-01T23:30:00Z",
                    "cancelled_at": "",
                    "did_not_arrive": False,
                    "patient_arrived": True,
                    "patient": link("patients", "82"),
                    "practitioner": link("practitioners", "7"),
                    "appointment_type": link("appointment_types", "3"),
                    "business": link("businesses", "1"),
                    "patient_case": link("patient_cases", "900"),
                },
                {
                    "id": "5002",
                    "starts_at": "2026-03-02T01:00:00+11:00",
                    "cancelled_at": "2026-03-01T10:00:00Z",
                    "did_not_arrive": "",
                    "patient": link("patients", "1234567890123456789"),
                },
            ],
        ),
    )
    write(
        "invoices/page-00001.json",
        page(
            "invoices",
            [
                {
                    "id": "1",
                    "status": 10,
                    "total_amount": "120.0",
                    "amount_paid": "50.5",
                    "issue_date": "2026-02-01",
                    "patient": link("patients", "82"),
                    "deleted_at": "",
                },
                {
                    "id": "2",
                    "status": 20,
                    "total_amount": "80.0",
                    "issue_date": "2026-02-02",
                    "patient": link("patients", "82"),
                },
                {
                    "id": "3",
                    "status": 30,
                    "total_amount": "10.0",
                    "issue_date": "2026-02-03",
                    "patient": link("patients", "82"),
                },
                {
                    "id": "4",
                    "status": 40,
                    "total_amount": "-5.0",
                    "issue_date": "2026-02-04",
                    "patient": link("patients", "82"),
                },
                {
                    "id": "5",
                    "status": 20,
                    "total_amount": "60.0",
                    "issue_date": "2026-02-05",
                    "patient": link("patients", "82"),
                    "deleted_at": "2026-02-06T00:00:00Z",
                },
                {
                    "id": "6",
                    "status": 50,
                    "total_amount": "1.0",
                    "issue_date": "2026-02-06",
                    "patient": link("patients", "82"),
                },
                "not a record",
            ],
        ),
    )
    write(
        "patient_cases/page-00001.json",
        page(
            "patient_cases",
            [
                {
                    "id": "900",
                    "name": "EPC knee",
                    "issue_date": "2026-01-10",
                    "expiry_date": "2027-01-10",
                    "max_sessions": 5,
                    "max_invoiceable_amount": "450.0",
                    "closed": False,
                    "closed_at": "",
                    "referral_type": "EPC",
                    "patient": link("patients", "82"),
                    "contact": link("contacts", "77"),
                }
            ],
        ),
    )
    write(
        "contacts/page-00001.json",
        page("contacts", [{"id": "77", "first_name": "Grace", "last_name": "Hopper"}]),
    )
    # Entities Cliniko lacks come from canonical CSV files beside the folders.
    write("leads.csv", "lead_id,patient_id,campaign_name,status\nL1,82,Knee seminar,new\n")


def test_ids_links_phones_consent_and_empty_strings(cliniko_extract, load):
    results, con = load("cliniko")
    got = con.execute(
        "select patient_id, first_name, mobile, email, status, address, date_of_birth,"
        " accepted_email_marketing, accepted_sms_marketing, created_at"
        " from raw.patients order by first_name"
    ).fetchall()
    assert got == [
        (
            "1234567890123456789",
            "Ann",
            "0412 345 678",
            None,
            "active",
            "Unit 2, 10 Pitt St",
            date(1980, 2, 29),
            True,
            False,
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        # archived_at set → archived; no Mobile entry → no mobile.
        ("82", "Bo", None, None, "archived", None, None, None, None, None),
    ]
    assert results["patients"].rows_in == 2


def test_appointments_resolve_links_and_status_flags(cliniko_extract, load):
    _, con = load("cliniko")
    got = con.execute(
        "select appointment_id, patient_id, practitioner_id, appointment_type_id, location_id,"
        " case_id, starts_at, cancelled_at, did_not_arrive, patient_arrived"
        " from raw.appointments order by 1"
    ).fetchall()
    assert got == [
        (
            "5001",
            "82",
            "7",
            "3",
            "1",
            "900",
            datetime(2026, 3, 1, 23, 30, tzinfo=UTC),
            None,
            False,
            True,
        ),
        # 01:00 at +11:00 is 14:00 UTC the day before.
        (
            "5002",
            "1234567890123456789",
            None,
            None,
            None,
            None,
            datetime(2026, 3, 1, 14, 0, tzinfo=UTC),
            datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
            None,
            None,
        ),
    ]


def test_invoice_status_codes_money_strings_and_rejections(cliniko_extract, load):
    results, con = load("cliniko")
    got = con.execute(
        "select invoice_id, status, total_amount, amount_paid from raw.invoices order by 1"
    ).fetchall()
    # Cliniko has no amount-paid field (an "amount_paid" in a page is not read): an open
    # invoice is owed in full.
    assert got == [
        ("1", "open", Decimal("120.00"), None),
        ("2", "paid", Decimal("80.00"), None),
        ("3", "closed", Decimal("10.00"), None),
        ("4", "paid", Decimal("-5.00"), None),  # 40 = Open (credit): more paid than owed
        ("5", "void", Decimal("60.00"), None),  # deleted → void, whatever the code
    ]
    rejected = con.execute(
        "select source_file, source_row, reason from raw.invoices__rejected order by source_row"
    ).fetchall()
    assert [(r[0].endswith("invoices/page-00001.json"), r[1], r[2]) for r in rejected] == [
        (True, 6, "status '50' is not one of: open, paid, closed, void"),
        (True, 7, "record is not a JSON object"),
    ]
    assert results["invoices"].rows_in == 7


def test_cases_resolve_the_referrer_and_csv_entities_sit_beside(cliniko_extract, load):
    results, con = load("cliniko")
    assert con.execute(
        "select case_id, patient_id, referring_provider, max_sessions, max_invoiceable_amount,"
        " closed, closed_at from raw.cases"
    ).fetchall() == [("900", "82", "Grace Hopper", 5, Decimal("450.00"), False, None)]
    assert con.execute("select lead_id, campaign_name from raw.leads").fetchall() == [
        ("L1", "Knee seminar")
    ]
    # Resources absent from the pull are empty entities.
    assert results["practitioners"].rows_in == 0


def test_missing_patients_folder_and_broken_page_are_clear_errors(write, load, tmp_path):
    write("individual_appointments/page-00001.json", page("individual_appointments", []))
    with pytest.raises(ExtractFileError, match="the 'patients' folder is missing"):
        load("cliniko")
    broken = write("patients/page-00001.json", '{"patients": [')
    with pytest.raises(ExtractFileError) as err:
        load("cliniko")
    assert str(err.value).startswith(f"{broken}: the page is not valid JSON")
