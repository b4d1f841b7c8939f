"""`entity: case` segments: one member per case, events counted per case.

As-of D = 2024-08-31; "+30 days" = 2024-09-30.
"""

from __future__ import annotations

from datetime import date

from segments.evaluate import WarehouseFrames, evaluate
from segments.field_catalogue import Catalogue
from segments.validation import parse_definition, read_yaml

D = date(2024, 8, 31)
ROWS = {
    "patient_features": [dict(patient_id="P1"), dict(patient_id="P2"), dict(patient_id="P3")],
    "case_features": [
        dict(case_id="C1", patient_id="P1", status="open", expiry_date=date(2024, 9, 30),
             sessions_left=1, pct_invoiced=80.0, referral_type="EPC"),
        dict(case_id="C2", patient_id="P1", status="open", expiry_date=date(2024, 10, 1),
             sessions_left=0, pct_invoiced=79.99, referral_type="EPC"),
        dict(case_id="C3", patient_id="P2", status="closed", expiry_date=date(2024, 9, 5),
             sessions_left=3, pct_invoiced=100.0, referral_type="DVA"),
        dict(case_id="C4", patient_id="P3", status="open", expiry_date=None,
             sessions_left=2, pct_invoiced=None, referral_type=None),
    ],
    "appointments": [
        dict(appointment_id="a1", patient_id="P1", case_id="C1", start_date=date(2024, 8, 1),
             status="attended"),
        dict(appointment_id="a2", patient_id="P1", case_id="C1", start_date=date(2024, 8, 8),
             status="attended"),
        dict(appointment_id="a3", patient_id="P1", case_id="C2", start_date=date(2024, 8, 15),
             status="attended"),
        dict(appointment_id="a4", patient_id="P1", case_id=None, start_date=date(2024, 8, 20),
             status="attended"),
        dict(appointment_id="a5", patient_id="P3", case_id="C4", start_date=date(2024, 8, 2),
             status="attended"),
    ],
}  # fmt: skip


def test_case_attribute_conditions(run_segment) -> None:
    last_session = """
name: one session left
entity: case
include:
  conditions:
    - {field: status, op: eq, value: open}
    - {field: sessions_left, op: lte, value: 1}
"""
    assert run_segment(last_session, ROWS, D) == ["C1", "C2"]
    expiring = """
name: expiring
entity: case
include:
  conditions:
    - {field: status, op: eq, value: open}
    - {field: expiry_date, op: between, value: [today, "+30 days"]}
"""
    # C1 expires exactly on D + 30 (inside); C2 a day later; C3 is closed.
    assert run_segment(expiring, ROWS, D) == ["C1"]
    invoiced = """
name: mostly invoiced
entity: case
include:
  conditions:
    - {field: status, op: eq, value: open}
    - {field: pct_invoiced, op: gte, value: 80}
"""
    # C1 80.0 yes, C2 79.99 no, C3 closed, C4 unknown.
    assert run_segment(invoiced, ROWS, D) == ["C1"]


def test_events_count_per_case(run_segment) -> None:
    yaml_text = """
name: two visits under the case
entity: case
include:
  conditions:
    - events: appointments
      where: {conditions: [{field: status, op: eq, value: attended}]}
      count: {op: gte, value: 2}
"""
    # Per case: C1 2 (a1, a2), C2 1, C4 1; a4 has no case. P1 has 4 visits in all, but
    # a case segment counts the case's own appointments.
    assert run_segment(yaml_text, ROWS, D) == ["C1"]


def test_case_members_carry_their_patient(tmp_path, catalogue: Catalogue, make_warehouse) -> None:
    db = make_warehouse(tmp_path / "wh.duckdb", ROWS)
    text = (
        "name: open\nentity: case\ninclude:\n  conditions: [{field: status, op: eq, value: open}]\n"
    )
    d = parse_definition(read_yaml(text, "x.yaml"), "x.yaml", catalogue)
    members = evaluate(d, WarehouseFrames(db), catalogue, D, "UTC")
    assert sorted(members.rows()) == [("P1", "C1"), ("P1", "C2"), ("P3", "C4")]


def test_patient_events_in_a_case_segment(run_segment) -> None:
    rows = {
        **ROWS,
        "leads": [dict(lead_id="l1", patient_id="P1", source="Seminar",
                       created_date=date(2024, 8, 1))],
    }  # fmt: skip
    yaml_text = """
name: cases of people who came from a seminar
entity: case
include:
  conditions:
    - events: leads
      where: {conditions: [{field: source, op: eq, value: Seminar}]}
"""
    # Leads belong to patients: both of P1's cases (C1, C2), each once.
    assert run_segment(yaml_text, rows, D) == ["C1", "C2"]
    none = yaml_text.replace("where:", "count: {op: eq, value: 0}\n      where:")
    assert run_segment(none, rows, D) == ["C3", "C4"]


def test_events_without_a_case_match_no_case(run_segment) -> None:
    rows = {
        **ROWS,
        # A case whose id is blank in the mart would otherwise pair with case-less events.
        "case_features": [*ROWS["case_features"], dict(case_id=None, patient_id="P2")],
        "appointments": [
            dict(appointment_id=f"n{i}", patient_id="P2", case_id=None,
                 start_date=date(2024, 8, 1), status="attended")
            for i in range(3)
        ],
    }  # fmt: skip
    yaml_text = """
name: any case with an appointment
entity: case
include:
  conditions:
    - events: appointments
"""
    # The three appointments have no case: no case has any appointment.
    assert run_segment(yaml_text, rows, D) == []
