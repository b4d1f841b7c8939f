"""The shipped starter library: every definition validates against the marts' dbt docs
and finds exactly the patients (or cases) it describes on a hand-built warehouse.

As-of D = 2024-08-31. Relative dates used below: -6 months = 2024-02-29, -12 months =
2023-08-31, -24 months = 2022-08-31, -90 days = 2024-06-02, -21 days = 2024-08-10,
+14 days = 2024-09-14, +30 days = 2024-09-30.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from segments.evaluate import WarehouseFrames, evaluate
from segments.field_catalogue import DEFAULT_CATALOGUE_PATH, Catalogue, load_catalogue
from segments.library import SHIPPED_DEFINITIONS
from segments.validation import load_segments

D = date(2024, 8, 31)
NEXT_WEEK = datetime(2024, 9, 7, 9, tzinfo=UTC)

PATIENTS = [
    # Lapsed physio (last physio visit between 2023-08-31 and 2024-02-29, nothing booked)
    # and high value (1500 > 1000, last visit before 2024-06-02).
    dict(patient_id="L01", status="active", last_appointment_category="Physio",
         last_visit_date=date(2024, 1, 15), lifetime_value=1500),
    # Same, but booked: in neither.
    dict(patient_id="L02", status="active", last_appointment_category="Physio",
         last_visit_date=date(2024, 1, 15), lifetime_value=1500,
         next_appointment_at=NEXT_WEEK),
    # Seen too recently to be lapsed; owes 50 on an invoice 45 days old; their
    # practitioner left.
    dict(patient_id="L03", status="active", last_appointment_category="Physio",
         last_visit_date=date(2024, 5, 1), balance_due=50, oldest_open_invoice_days=45,
         last_practitioner_active=False, cadence_overdue_ratio=3.0, total_visits=2),
    # Chiro, on the waitlist, exactly twice overdue with 3 visits; owes 50 but only 20 days.
    dict(patient_id="L04", status="active", last_appointment_category="Chiro",
         last_visit_date=date(2024, 1, 15), on_waitlist=True, cadence_overdue_ratio=2.0,
         total_visits=3, balance_due=50, oldest_open_invoice_days=20),
    # Last seen exactly 24 months ago: dormant. Birthday soon but opted out of e-mail.
    dict(patient_id="L05", status="inactive", last_visit_date=date(2022, 8, 31),
         days_until_birthday=5, has_email=True, email_opted_out=True),
    # One day short of dormant; birthday in 3 days, e-mail fine.
    dict(patient_id="L06", status="active", last_visit_date=date(2022, 9, 1),
         days_until_birthday=3, has_email=True, email_opted_out=False),
    # A new lead who came from a seminar, never booked.
    dict(patient_id="L07", status="prospect", lead_status="new", referral_source="Seminar"),
    # A contacted lead from a seminar campaign whose only appointment was cancelled.
    dict(patient_id="L08", status="prospect", lead_status="contacted"),
    # A new lead with an upcoming surgical consult (D + 10).
    dict(patient_id="L09", status="prospect", lead_status="new"),
    # One visit 22 days ago, nothing booked: a new patient to follow up.
    dict(patient_id="L10", status="active", total_visits=1, first_visit_date=date(2024, 8, 9),
         last_visit_date=date(2024, 8, 9)),
    # One visit exactly 21 days ago: not yet.
    dict(patient_id="L11", status="active", total_visits=1, first_visit_date=date(2024, 8, 10),
         last_visit_date=date(2024, 8, 10)),
    # Three physio visits with practitioner 1 this year, last seen by practitioner 1.
    dict(patient_id="L12", status="active", last_practitioner_id="1"),
]  # fmt: skip


def appt(aid, pid, day, category, status, practitioner="2"):
    return dict(appointment_id=aid, patient_id=pid, start_date=day, category=category,
                status=status, practitioner_id=practitioner)  # fmt: skip


ROWS = {
    "patient_features": PATIENTS,
    "appointments": [
        appt("a1", "L08", date(2024, 8, 1), "Physio", "cancelled"),
        appt("a2", "L09", date(2024, 9, 10), "Surgery", "upcoming"),
        appt("a3", "L12", date(2023, 10, 1), "Physio", "attended", "1"),
        appt("a4", "L12", date(2024, 2, 1), "Physio", "attended", "1"),
        appt("a5", "L12", date(2024, 6, 1), "Physio", "attended", "1"),
        appt("a6", "L10", date(2024, 8, 9), "Physio", "attended"),
    ],
    "leads": [
        dict(lead_id="x1", patient_id="L08", source="Facebook", status="contacted",
             campaign_name="Back pain seminar, May", created_date=date(2024, 5, 1)),
        dict(lead_id="x2", patient_id="L09", source="Google", status="new",
             campaign_name="Knee surgery", created_date=date(2024, 8, 1)),
    ],
    "case_features": [
        dict(case_id="C1", patient_id="L01", status="open", referral_type="EPC",
             expiry_date=date(2024, 9, 15), max_sessions=5, sessions_left=2, pct_invoiced=85.0),
        dict(case_id="C2", patient_id="L01", status="open", referral_type="EPC",
             expiry_date=date(2024, 9, 15), max_sessions=5, sessions_left=0, pct_invoiced=10.0),
        dict(case_id="C3", patient_id="L04", status="open", referral_type=None,
             expiry_date=None, sessions_left=1, pct_invoiced=None),
        dict(case_id="C4", patient_id="L04", status="closed", referral_type="EPC",
             expiry_date=date(2024, 9, 10), max_sessions=5, sessions_left=0,
             pct_invoiced=100.0),
    ],
}  # fmt: skip

EXPECTED = {
    "lapsed-physio-6-12mo": ["L01"],
    "dormant-24mo": ["L05"],
    "high-value-not-rebooked-90d": ["L01"],
    "orphaned-patients": ["L03"],
    "overdue-against-cadence": ["L04"],
    "birthdays-next-7-days": ["L06"],
    "invoices-outstanding-30d": ["L03"],
    "leads-not-scheduled": ["L07", "L08"],
    "seminar-attendees-never-booked": ["L07", "L08"],
    "surgery-pre-op-14d": ["L09"],
    "waitlist": ["L04"],
    "referral-cases-expiring-30d": ["C1"],
    "cases-last-session": ["C2", "C3"],
    "cases-80pct-invoiced": ["C1"],
    "new-patients-not-rebooked-21d": ["L10"],
    "practitioner-own-physio-pipeline": ["L12"],
}


def test_library_validates_against_the_dbt_catalogue() -> None:
    if not DEFAULT_CATALOGUE_PATH.exists():
        pytest.skip("the marts' dbt YAML is not in this checkout")
    segments = load_segments([SHIPPED_DEFINITIONS], load_catalogue())
    assert sorted(s.slug for s in segments) == sorted(EXPECTED)


def test_library_has_workflows_and_case_segments(catalogue: Catalogue) -> None:
    segments = {s.slug: s.definition for s in load_segments([SHIPPED_DEFINITIONS], catalogue)}
    lapsed = segments["lapsed-physio-6-12mo"].workflow
    assert lapsed is not None
    assert lapsed.stages == ["To call", "Left voicemail", "Booked", "Not interested"]
    assert {s for s, d in segments.items() if d.entity == "case"} == {
        "referral-cases-expiring-30d",
        "cases-last-session",
        "cases-80pct-invoiced",
    }


@pytest.mark.parametrize("once", [False, True], ids=["categorised", "text-kept"])
def test_every_starter_definition_finds_its_members(
    catalogue: Catalogue, warehouse_for, once: bool
) -> None:
    # Held as a long-lived process holds them (low-cardinality text as Categorical) and as
    # a one-evaluation preview does (text kept): the same members.
    segments = load_segments([SHIPPED_DEFINITIONS], catalogue)
    frames = WarehouseFrames(warehouse_for(ROWS), once=once)
    frames.prepare([s.definition for s in segments])
    found = {}
    for seg in segments:
        members = evaluate(seg.definition, frames, catalogue, D, "UTC")
        key = "case_id" if seg.definition.entity == "case" else "patient_id"
        found[seg.slug] = sorted(members[key].to_list())
    assert found == EXPECTED


DESIGN_EXAMPLE = """
name: Lapsed physio 6-12 months
description: Highest-yield reactivation cohort.
entity: patient
mode: dynamic
visibility: shared
owner: front-desk@clinic.example
include:
  match: all
  conditions:
    - {field: last_appointment_category, op: in, value: [Physio]}
    - {field: last_visit_date, op: between, value: ["-12 months", "-6 months"]}
    - {field: status, op: eq, value: active}
    - {field: has_mobile, op: is_true}
    - match: any
      conditions:
        - {field: lifetime_value, op: gte, value: 1000}
        - {field: total_visits, op: gte, value: 5}
    - events: appointments
      where:
        match: all
        conditions:
          - {field: category, op: eq, value: Physio}
          - {field: status, op: eq, value: attended}
      within: {from: "-12 months", to: "today"}
      count: {op: gte, value: 3}
exclude:
  match: any
  conditions:
    - {field: next_appointment_at, op: is_not_null}
"""


def test_the_design_example(catalogue: Catalogue, warehouse_for) -> None:
    from segments.validation import parse_definition, read_yaml

    d = parse_definition(read_yaml(DESIGN_EXAMPLE, "design.yaml"), "design.yaml", catalogue)
    rows = {
        "patient_features": [
            # Lapsed physio, mobile, 5 visits, 3 attended physio visits in the window.
            dict(patient_id="Y1", status="active", last_appointment_category="Physio",
                 last_visit_date=date(2024, 1, 10), has_mobile=True, total_visits=5,
                 lifetime_value=400),
            # Same but only 2 physio visits in the window.
            dict(patient_id="Y2", status="active", last_appointment_category="Physio",
                 last_visit_date=date(2024, 1, 10), has_mobile=True, total_visits=5,
                 lifetime_value=400),
            # Same as Y1 but low value and few visits: fails the nested `any`.
            dict(patient_id="Y3", status="active", last_appointment_category="Physio",
                 last_visit_date=date(2024, 1, 10), has_mobile=True, total_visits=3,
                 lifetime_value=400),
        ],
        "appointments": [
            dict(appointment_id=f"{p}-{i}", patient_id=p, category="Physio", status="attended",
                 start_date=day)
            for p, days in (
                ("Y1", (date(2023, 9, 1), date(2023, 11, 1), date(2024, 1, 10))),
                ("Y2", (date(2023, 8, 30), date(2023, 11, 1), date(2024, 1, 10))),
                ("Y3", (date(2023, 9, 1), date(2023, 11, 1), date(2024, 1, 10))),
            )
            for i, day in enumerate(days)
        ],
    }  # fmt: skip
    members = evaluate(d, WarehouseFrames(warehouse_for(rows)), catalogue, D, "UTC")
    # Y2's first visit (2023-08-30) is a day before the window (2023-08-31).
    assert members["patient_id"].to_list() == ["Y1"]
