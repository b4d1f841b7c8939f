"""Every column of patient_features and case_features for the tiny clinic of conftest.py,
worked out by hand from docs/warehouse.md (D = 2024-03-01, Australia/Sydney).

The marts come from a real `dbt build` of dbt_project/ on a real DuckDB file.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import duckdb
import pytest

from clinic_audiences.headlines import headline_figures

pytestmark = pytest.mark.dbt


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NO_VISITS = {
    "first_visit_date": None, "last_visit_date": None, "days_since_last_visit": None,
    "next_appointment_at": None, "total_visits": 0, "visits_last_365d": 0, "dna_count": 0,
    "cancellation_count": 0, "cadence_days": None, "cadence_overdue_ratio": None,
    "last_practitioner_id": None, "last_practitioner_name": None,
    "last_practitioner_active": None, "last_appointment_type": None,
    "last_appointment_category": None, "appointment_categories_attended": [],
}
NO_LEAD = {
    "lead_status": None, "lead_campaign": None, "lead_created_date": None, "lead_owner": None,
    "procedure_of_interest": None,
}
NO_MONEY = {
    "lifetime_value": Decimal("0.00"), "total_paid": Decimal("0.00"),
    "balance_due": Decimal("0.00"), "oldest_open_invoice_days": None,
}
NO_ADDRESS = {
    "state": None, "post_code": None, "city": None, "country": None, "referral_source": None,
    "referring_provider": None, "insurance_plan": None, "latitude": None, "longitude": None,
    "created_at": None,
}

EXPECTED_PATIENTS: dict[str, dict[str, object]] = {
    "p1": {
        "patient_id": "p1", "first_name": "Alice", "last_name": "Smith", "sex": "F",
        "status": "active", "state": "NSW", "post_code": "2026", "city": "Bondi",
        "country": "AU", "referral_source": "Google", "referring_provider": None,
        "insurance_plan": "Bupa", "latitude": -33.89, "longitude": 151.27,
        "created_at": utc("2020-01-01 00:00:00"),
        # Born 1 March 1980: D is the birthday -> 0 days, turns 44 today.
        "age": 44, "date_of_birth": date(1980, 3, 1), "days_until_birthday": 0,
        "email": "p1@example.com", "mobile": "0412 345 678",
        "has_email": True, "has_mobile": True, "has_whatsapp": True,  # 10 digits, flag true
        "email_opted_out": False, "sms_opted_out": False,
        # Attended local dates: 2 Oct, 2 Nov, 2 Dec, 6 Jan, 2 Feb (x2), 16 Feb.
        # a8 (29 Feb 13:30 UTC) is 1 March 00:30 in Sydney = D -> upcoming, not a visit.
        "first_visit_date": date(2023, 10, 2), "last_visit_date": date(2024, 2, 16),
        "days_since_last_visit": 14,  # 16 Feb -> 1 Mar in a leap year
        "next_appointment_at": utc("2024-02-29 13:30:00"),  # a8, before a11 on 11 Mar
        "total_visits": 7, "visits_last_365d": 7,  # all after D - 365 = 2023-03-02
        "dna_count": 1, "cancellation_count": 1,
        # 6 distinct dates, gaps newest first 14, 27, 35, 30, 31 -> sorted 14 27 30 31 35
        "cadence_days": 30.0, "cadence_overdue_ratio": 14 / 30,
        "last_practitioner_id": "dr_a", "last_practitioner_name": "Ann Able",
        "last_practitioner_active": True, "last_appointment_type": "Physio follow-up",
        "last_appointment_category": "Physio",
        "appointment_categories_attended": ["Chiro", "Physio", "Pilates"],
        # Non-void: 100 (open) + 90 (paid) + 70 (closed) = 260; inv3 (80) is void.
        # Paid: 40 (open, partial) + 90 + 70 (closed counts in full) = 200; due 100 - 40.
        "lifetime_value": Decimal("260.00"), "total_paid": Decimal("200.00"),
        "balance_due": Decimal("60.00"),
        "avg_visit_fee": Decimal("37.14"),  # 260 / 7 = 37.142...
        "oldest_open_invoice_days": 28,  # inv1 issued 2 Feb
        "open_case_count": 1,  # c1, no closed flag or date
        # l2 (1 Dec 2019) is more recent than l1 (1 Jun 2019).
        "lead_status": "contacted", "lead_campaign": "Newsletter",
        "lead_created_date": date(2019, 12, 1), "lead_owner": "kim",
        "procedure_of_interest": "Pilates",
        "on_waitlist": True,  # w2 removed 5 Mar, after D (w1 removed 10 Feb)
        "diagnosis_codes": ["97110", "M54.5"],  # distinct, sorted
        # The PMS's own fields as "Section / Field: value", sorted.
        "custom_fields": ["Insurance coverage / Provider: Bupa", "Referral / Source: GP"],
    },
    "p2": {
        **NO_ADDRESS,
        "patient_id": "p2", "first_name": "Ben", "last_name": "Jones", "sex": "M",
        "status": "active", "state": "NSW", "referring_provider": "Dr Who",
        # Born 29 Feb 2000; 2024 birthday was yesterday (29 Feb) -> 24; next is
        # 28 Feb 2025 (non-leap): 364 days.
        "age": 24, "date_of_birth": date(2000, 2, 29), "days_until_birthday": 364,
        "email": "bad-email", "mobile": "555 1234",
        "has_email": False, "has_mobile": False, "has_whatsapp": False,  # 7 digits
        # accepted_email_marketing false; sms opt-out on 1 Feb (before D).
        "email_opted_out": True, "sms_opted_out": True,
        "first_visit_date": date(2023, 12, 11), "last_visit_date": date(2024, 1, 10),
        "days_since_last_visit": 51, "next_appointment_at": None,
        "total_visits": 2, "visits_last_365d": 2, "dna_count": 0, "cancellation_count": 0,
        "cadence_days": None, "cadence_overdue_ratio": None,  # only 2 dates
        # dr_b left on 15 Jan -> orphan.
        "last_practitioner_id": "dr_b", "last_practitioner_name": "Bob Gone",
        "last_practitioner_active": False, "last_appointment_type": "Chiro adjustment",
        "last_appointment_category": "Chiro", "appointment_categories_attended": ["Chiro"],
        # inv5 open 50 nothing paid; inv6 open 40 fully paid.
        "lifetime_value": Decimal("90.00"), "total_paid": Decimal("40.00"),
        "balance_due": Decimal("50.00"), "avg_visit_fee": Decimal("45.00"),
        "oldest_open_invoice_days": 51,  # inv5 issued 10 Jan; inv6 has no balance
        "open_case_count": 0,  # c2 closed_at 1 Feb
        **NO_LEAD,
        "on_waitlist": False, "diagnosis_codes": [], "custom_fields": [],
    },
    "p3": {
        **NO_ADDRESS, **NO_VISITS, **NO_MONEY,
        "patient_id": "p3", "first_name": "Cara", "last_name": "Lee", "sex": None,
        "status": "prospect", "referral_source": "Event",
        "age": None, "date_of_birth": None, "days_until_birthday": None,
        "email": "lead@example.org", "mobile": None,
        "has_email": True, "has_mobile": False, "has_whatsapp": False,
        # The "all" opt-out is dated 5 Mar, after D; consents unknown.
        "email_opted_out": False, "sms_opted_out": False,
        "avg_visit_fee": None, "open_case_count": 0,
        # Created 28 Feb 14:00 UTC = 29 Feb 01:00 in Sydney.
        "lead_status": "new", "lead_campaign": "Knee clinic evening",
        "lead_created_date": date(2024, 2, 29), "lead_owner": "sam",
        "procedure_of_interest": "ACL rehab",
        "on_waitlist": True,  # w3 never removed
        "diagnosis_codes": [], "custom_fields": [],
    },
    "p4": {
        **NO_ADDRESS, **NO_LEAD,
        "patient_id": "p4", "first_name": "Dan", "last_name": "Wu", "sex": None,
        "status": "active", "post_code": "0800",
        # Born 31 Dec 1990: 33 at D; 2024-03-01 -> 2024-12-31 is 305 days.
        "age": 33, "date_of_birth": date(1990, 12, 31), "days_until_birthday": 305,
        "email": " p4@clinic.example ", "mobile": "+61 400 000 000",
        "has_email": True, "has_mobile": True, "has_whatsapp": False,  # flag false
        "email_opted_out": False, "sms_opted_out": False,
        "first_visit_date": date(2024, 1, 2), "last_visit_date": date(2024, 2, 2),
        "days_since_last_visit": 28,
        # d4 (5 Mar) is a future DNA and d6 (8 Mar) cancelled: the next is d5.
        "next_appointment_at": utc("2024-03-12 22:00:00"),
        "total_visits": 3, "visits_last_365d": 3, "dna_count": 1, "cancellation_count": 1,
        # Gaps 10 (2 -> 12 Jan) and 21 (12 Jan -> 2 Feb): mean of the two = 15.5.
        "cadence_days": 15.5, "cadence_overdue_ratio": 28 / 15.5,
        "last_practitioner_id": "dr_a", "last_practitioner_name": "Ann Able",
        "last_practitioner_active": True, "last_appointment_type": "Physio follow-up",
        "last_appointment_category": "Physio", "appointment_categories_attended": ["Physio"],
        # inv7 paid 85 + inv8 open 85 fully paid; inv9 void.
        "lifetime_value": Decimal("170.00"), "total_paid": Decimal("170.00"),
        "balance_due": Decimal("0.00"), "avg_visit_fee": Decimal("56.67"),  # 170 / 3
        "oldest_open_invoice_days": None, "open_case_count": 1,
        "on_waitlist": False, "diagnosis_codes": [],
        "custom_fields": None,  # the text is a JSON list, not an object of fields
    },
    "p5": {
        **NO_ADDRESS, **NO_LEAD, **NO_MONEY,
        "patient_id": "p5", "first_name": "Eve", "last_name": "Moss", "sex": None,
        "status": "active",
        "age": None, "date_of_birth": None, "days_until_birthday": None,
        "email": None, "mobile": None,
        "has_email": False, "has_mobile": False, "has_whatsapp": False,
        "email_opted_out": False, "sms_opted_out": False,
        # 14 Aug 23:00 UTC = 15 Aug 09:00 in Sydney (UTC+10 in winter); 199 days to D.
        "first_visit_date": date(2023, 8, 15), "last_visit_date": date(2023, 8, 15),
        "days_since_last_visit": 199, "next_appointment_at": None,
        "total_visits": 1, "visits_last_365d": 1, "dna_count": 0, "cancellation_count": 0,
        "cadence_days": None, "cadence_overdue_ratio": None,
        # The visit had no practitioner and no type.
        "last_practitioner_id": None, "last_practitioner_name": None,
        "last_practitioner_active": None, "last_appointment_type": None,
        "last_appointment_category": None, "appointment_categories_attended": [],
        "avg_visit_fee": Decimal("0.00"),  # one visit, no invoices
        "open_case_count": 0, "on_waitlist": False, "diagnosis_codes": [],
        "custom_fields": [],
    },
}

EXPECTED_CASES: dict[str, dict[str, object]] = {
    "c1": {
        "case_id": "c1", "patient_id": "p1", "name": "DVA shoulder", "status": "open",
        "issue_date": date(2023, 6, 1), "expiry_date": date(2024, 6, 1),
        "days_until_expiry": 92,  # 31 + 30 + 31
        "max_sessions": 0, "sessions_done": 0, "sessions_booked": 0, "sessions_left": 0,
        "pct_sessions_booked": None, "pct_sessions_done": None,  # denominator 0
        "total_invoiced": Decimal("0.00"), "max_invoiceable_amount": Decimal("0.00"),
        "invoiceable_left": Decimal("0.00"), "pct_invoiced": None,
        "closed_at": None, "referral_type": None, "referring_provider": None,
    },
    "c2": {
        "case_id": "c2", "patient_id": "p2", "name": "WorkCover back",
        "status": "closed",  # closed_at 1 Feb, before D, though the flag is false
        "issue_date": date(2023, 1, 1), "expiry_date": None, "days_until_expiry": None,
        "max_sessions": None, "sessions_done": 1, "sessions_booked": 1,  # b1
        "sessions_left": None, "pct_sessions_booked": None, "pct_sessions_done": None,
        "total_invoiced": Decimal("40.00"),  # inv6 names c2
        "max_invoiceable_amount": None, "invoiceable_left": None, "pct_invoiced": None,
        "closed_at": utc("2024-02-01 10:00:00"), "referral_type": "WorkCover",
        "referring_provider": None,
    },
    "c3": {
        "case_id": "c3", "patient_id": "p4", "name": "EPC knee", "status": "open",
        "issue_date": date(2024, 1, 1), "expiry_date": date(2024, 3, 20),
        "days_until_expiry": 19, "max_sessions": 5,
        # done: d1 d2 d3; booked: those + d4 (DNA) + d5 (upcoming); d6 cancelled.
        "sessions_done": 3, "sessions_booked": 5, "sessions_left": 2,
        "pct_sessions_booked": 100.0, "pct_sessions_done": 60.0,
        # inv7 has no case but its appointment d1 is on c3; inv8 names c3; inv9 void.
        "total_invoiced": Decimal("170.00"), "max_invoiceable_amount": Decimal("500.00"),
        "invoiceable_left": Decimal("330.00"), "pct_invoiced": 34.0,
        "closed_at": None, "referral_type": "EPC", "referring_provider": "Dr GP",
    },
}


def rows_by_key(con: duckdb.DuckDBPyConnection, table: str, key: str) -> dict[str, dict]:
    result = con.sql(f"select * from {table}")
    columns = result.columns
    return {
        row[columns.index(key)]: dict(zip(columns, row, strict=True))
        for row in result.fetchall()
    }


def assert_row_matches(actual: dict[str, object], expected: dict[str, object]) -> None:
    assert set(actual) == set(expected), (
        f"columns differ: missing {set(expected) - set(actual)}, "
        f"unexpected {set(actual) - set(expected)}"
    )
    mismatches = {}
    for column, want in expected.items():
        got = actual[column]
        if isinstance(want, float):
            ok = got is not None and got == pytest.approx(want)
        else:
            ok = got == want and type(got) is type(want)
        if not ok:
            mismatches[column] = (got, want)
    assert not mismatches, f"(actual, expected) by column: {mismatches}"


@pytest.mark.parametrize("patient_id", sorted(EXPECTED_PATIENTS))
def test_patient_features_every_column(marts, patient_id):
    actual = rows_by_key(marts, "marts.patient_features", "patient_id")
    assert set(actual) == set(EXPECTED_PATIENTS)
    assert_row_matches(actual[patient_id], EXPECTED_PATIENTS[patient_id])


@pytest.mark.parametrize("case_id", sorted(EXPECTED_CASES))
def test_case_features_every_column(marts, case_id):
    actual = rows_by_key(marts, "marts.case_features", "case_id")
    assert set(actual) == set(EXPECTED_CASES)
    assert_row_matches(actual[case_id], EXPECTED_CASES[case_id])


def test_appointments_mart_classifies_in_clinic_time(marts):
    rows = rows_by_key(marts, "marts.appointments", "appointment_id")
    assert len(rows) == 20
    # 29 Feb 13:30 UTC is D in Sydney: upcoming.
    assert (rows["a8"]["start_date"], rows["a8"]["status"]) == (date(2024, 3, 1), "upcoming")
    assert (rows["a7"]["start_date"], rows["a7"]["status"]) == (date(2024, 2, 16), "attended")
    assert (rows["a9"]["status"], rows["a9"]["is_booked"]) == ("cancelled", False)
    assert (rows["d4"]["status"], rows["d4"]["is_booked"]) == ("dna", True)  # future DNA
    assert (rows["a6"]["appointment_type"], rows["a6"]["category"]) == (
        "Clinical pilates", "Pilates")
    assert (rows["b1"]["practitioner_name"], rows["b1"]["location_name"]) == ("Bob Gone", "Bondi")
    assert rows["e1"]["appointment_type"] is None


def test_invoices_mart_balances_and_resolves_cases(marts):
    rows = rows_by_key(marts, "marts.invoices", "invoice_id")
    picked = {
        k: (r["status"], r["amount_paid"], r["balance_due"], r["case_id"], r["days_outstanding"])
        for k, r in rows.items()
    }
    assert picked["inv1"] == ("open", Decimal("40.00"), Decimal("60.00"), None, 28)
    assert picked["inv2"] == ("paid", Decimal("90.00"), Decimal("0.00"), None, None)
    assert picked["inv3"] == ("void", Decimal("0.00"), Decimal("0.00"), None, None)
    assert picked["inv4"] == ("closed", Decimal("70.00"), Decimal("0.00"), None, None)
    assert picked["inv5"] == ("open", Decimal("0.00"), Decimal("50.00"), None, 51)
    assert picked["inv7"] == ("paid", Decimal("85.00"), Decimal("0.00"), "c3", None)
    assert rows["inv1"]["practitioner_name"] == "Ann Able"


def test_leads_diagnoses_and_cases_marts(marts):
    leads = rows_by_key(marts, "marts.leads", "lead_id")
    assert (leads["l3"]["created_date"], leads["l3"]["has_appointment"]) == (
        date(2024, 2, 29), False)
    assert leads["l1"]["has_appointment"] is True
    diagnoses = marts.sql(
        "select code, recorded_date from marts.diagnoses order by recorded_at, code"
    ).fetchall()
    assert diagnoses == [
        ("97110", date(2023, 10, 2)), ("M54.5", date(2023, 10, 2)), ("M54.5", date(2023, 11, 2))
    ]
    cases = rows_by_key(marts, "marts.cases", "case_id")
    # c3's latest booked appointment is d5 (12 Mar), with dr_a at Bondi.
    c3 = cases["c3"]
    assert (c3["patient_first_name"], c3["practitioner_name"], c3["location_name"]) == (
        "Dan", "Ann Able", "Bondi")
    assert c3["last_booked_appointment_at"] == utc("2024-03-12 22:00:00")
    assert cases["c1"]["practitioner_id"] is None  # no appointments on c1
    assert cases["c2"]["status"] == "closed"


def test_warehouse_records_its_as_of(marts):
    assert marts.sql("select as_of, clinic_timezone from marts.warehouse_as_of").fetchall() == [
        (date(2024, 3, 1), "Australia/Sydney")
    ]


def test_headline_figures(marts):
    assert headline_figures(marts) == {
        "as_of": date(2024, 3, 1),
        "patients": 5,
        "active_patients": 4,  # p3 is a prospect
        "lapsed_6_12_months": 1,  # p5, last seen 15 Aug 2023 (1 Mar .. 1 Sep 2023)
        "total_balance_due": Decimal("110.00"),  # p1 60 + p2 50
        "open_cases_expiring_30d": 1,  # c3 in 19 days; c1 in 92; c2 closed
    }


def test_headline_figures_explain_an_unbuilt_warehouse(tmp_path):
    con = duckdb.connect(str(tmp_path / "empty.duckdb"))
    try:
        with pytest.raises(RuntimeError, match="not built yet"):
            headline_figures(con)
    finally:
        con.close()
