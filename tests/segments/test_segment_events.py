"""Behavioural conditions over appointments, invoices, leads and diagnoses.

As-of D = 2024-08-31; "-12 months" = 2023-08-31, "+14 days" = 2024-09-14. The `within`
window applies to each event's natural date and includes both ends.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

D = date(2024, 8, 31)


def appt(aid: str, pid: str, day: date, category: str, status: str, **extra) -> dict:
    return dict(appointment_id=aid, patient_id=pid, start_date=day, category=category,
                status=status, **extra)  # fmt: skip


ROWS = {
    "patient_features": [dict(patient_id=p, status="active") for p in
                         ("E1", "E2", "E3", "E4", "E5")],
    "appointments": [
        # E1: three attended physio inside the window, one cancelled.
        appt("a1", "E1", date(2024, 8, 1), "Physio", "attended"),
        appt("a2", "E1", date(2024, 5, 1), "Physio", "attended"),
        appt("a3", "E1", date(2023, 9, 1), "Physio", "attended"),
        appt("a4", "E1", date(2024, 7, 1), "Physio", "cancelled"),
        # E2: one physio a day before the window, one inside, and a chiro visit.
        appt("b1", "E2", date(2023, 8, 30), "Physio", "attended"),
        appt("b2", "E2", date(2024, 1, 10), "Physio", "attended"),
        appt("b3", "E2", date(2024, 2, 2), "Chiro", "attended"),
        # E3: physio exactly on the window's first day and the day before D; one DNA.
        appt("c1", "E3", date(2023, 8, 31), "Physio", "attended"),
        appt("c2", "E3", date(2024, 8, 30), "Physio", "attended"),
        appt("c3", "E3", date(2024, 6, 1), "Physio", "dna"),
        # E4: no appointments at all.
        # E5: two upcoming surgical consults, on D + 10 and D + 20 days.
        appt("e1", "E5", date(2024, 9, 10), "Surgery", "upcoming",
             starts_at=datetime(2024, 9, 10, 1, tzinfo=UTC)),
        appt("e2", "E5", date(2024, 9, 20), "Surgery", "upcoming",
             starts_at=datetime(2024, 9, 20, 1, tzinfo=UTC)),
    ],
    "invoices": [
        dict(invoice_id="i1", patient_id="E1", issue_date=date(2024, 8, 20), status="open"),
        dict(invoice_id="i2", patient_id="E2", issue_date=date(2024, 7, 1), status="open"),
        dict(invoice_id="i3", patient_id="E3", issue_date=date(2024, 8, 25), status="paid"),
    ],
    "leads": [
        dict(lead_id="l1", patient_id="E4", source="Seminar", created_date=date(2024, 8, 1),
             status="new"),
        dict(lead_id="l2", patient_id="E5", source="Google", created_date=date(2024, 8, 1),
             status="new"),
    ],
    "diagnoses": [
        dict(patient_id="E1", code_system="ICD-10", code="M54.5", recorded_date=date(2024, 1, 1)),
        dict(patient_id="E3", code_system="ICD-10", code="M17.11", recorded_date=date(2024, 1, 1)),
    ],
}  # fmt: skip

PHYSIO_ATTENDED = """
    - events: appointments
      where:
        match: all
        conditions:
          - {field: category, op: eq, value: Physio}
          - {field: status, op: eq, value: attended}
      within: {from: "-12 months", to: today}
      count: COUNT
"""


def physio(count: str) -> str:
    return "name: t\ninclude:\n  conditions:" + PHYSIO_ATTENDED.replace("COUNT", count)


def test_count_gte_with_window_boundaries(run_segment) -> None:
    # In window [2023-08-31, 2024-08-31]: E1 3, E2 1 (2023-08-30 is outside), E3 2
    # (2023-08-31 is inside; the DNA does not count). gte 2 -> E1, E3.
    assert run_segment(physio("{op: gte, value: 2}"), ROWS, D) == ["E1", "E3"]
    assert run_segment(physio("{op: gte, value: 3}"), ROWS, D) == ["E1"]


def test_count_between_and_eq(run_segment) -> None:
    assert run_segment(physio("{op: between, value: [1, 2]}"), ROWS, D) == ["E2", "E3"]
    assert run_segment(physio("{op: eq, value: 1}"), ROWS, D) == ["E2"]


def test_count_zero_includes_patients_without_any_events(run_segment) -> None:
    # Nobody without physio in the window: E4 (no appointments at all) and E5 (surgery).
    assert run_segment(physio("{op: eq, value: 0}"), ROWS, D) == ["E4", "E5"]
    assert run_segment(physio("{op: lt, value: 1}"), ROWS, D) == ["E4", "E5"]


def test_default_count_is_at_least_one_and_window_may_look_forward(run_segment) -> None:
    yaml_text = """
name: surgery soon
include:
  conditions:
    - events: appointments
      where: {conditions: [{field: category, op: eq, value: Surgery}]}
      within: {from: today, to: "+14 days"}
"""
    # E5's consult on D+10 is inside, the one on D+20 is not; one is enough.
    assert run_segment(yaml_text, ROWS, D) == ["E5"]
    # On D = 2024-09-11 the window is [09-11, 09-25]: only the D+20 one, still E5;
    # on 2024-09-21 neither.
    assert run_segment(yaml_text, ROWS, date(2024, 9, 11)) == ["E5"]
    assert run_segment(yaml_text, ROWS, date(2024, 9, 21)) == []


def test_window_with_only_from(run_segment) -> None:
    yaml_text = """
name: any appointment since March
include:
  conditions:
    - events: appointments
      within: {from: "2024-03-01"}
      count: {op: gte, value: 2}
"""
    # On or after 2024-03-01: E1 a1, a4 (cancelled counts: no where) = 2 ... plus a2
    # (May) = 3; E2 none; E3 c2, c3 = 2; E5 e1, e2 = 2.
    assert run_segment(yaml_text, ROWS, D) == ["E1", "E3", "E5"]


def test_where_on_a_timestamp_field(run_segment) -> None:
    yaml_text = """
name: consult starting after the 15th
include:
  conditions:
    - events: appointments
      where: {conditions: [{field: starts_at, op: gt, value: "+15 days"}]}
"""
    # starts_at dates: e1 2024-09-10, e2 2024-09-20 > 2024-09-15; other rows have none.
    assert run_segment(yaml_text, ROWS, D) == ["E5"]


def test_events_in_exclude(run_segment) -> None:
    yaml_text = """
name: active without anything booked
include:
  conditions: [{field: status, op: eq, value: active}]
exclude:
  conditions:
    - events: appointments
      where: {conditions: [{field: status, op: eq, value: upcoming}]}
"""
    assert run_segment(yaml_text, ROWS, D) == ["E1", "E2", "E3", "E4"]


def test_invoices_leads_and_diagnoses(run_segment) -> None:
    open_recent = """
name: open invoice in the last 30 days
include:
  conditions:
    - events: invoices
      where: {conditions: [{field: status, op: eq, value: open}]}
      within: {from: "-30 days", to: today}
"""
    # -30 days = 2024-08-01: i1 (E1, 08-20, open) yes; i2 is older; i3 is paid.
    assert run_segment(open_recent, ROWS, D) == ["E1"]
    seminar = """
name: seminar leads
include:
  conditions:
    - events: leads
      where: {conditions: [{field: source, op: contains, value: SEMINAR}]}
"""
    assert run_segment(seminar, ROWS, D) == ["E4"]
    knees = """
name: knee osteoarthritis or back pain
include:
  match: any
  conditions:
    - events: diagnoses
      where: {conditions: [{field: code, op: starts_with, value: M17}]}
    - events: diagnoses
      where: {conditions: [{field: code, op: in, value: [M54.5]}]}
"""
    assert run_segment(knees, ROWS, D) == ["E1", "E3"]


def test_two_events_conditions_combined(run_segment) -> None:
    yaml_text = (
        physio("{op: gte, value: 1}")
        + """    - events: invoices
      where: {conditions: [{field: status, op: eq, value: open}]}
"""
    )
    # Physio in window: E1, E2, E3; with an open invoice: E1, E2.
    assert run_segment(yaml_text, ROWS, D) == ["E1", "E2"]


def test_text_ids_are_used_when_hashed_ids_collide(run_segment, monkeypatch) -> None:
    import polars as pl

    import segments.evaluate as ev

    # Give every id the same hash: loading must notice and join on the ids themselves.
    def colliding(df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(
            pl.lit(1, dtype=pl.UInt64).alias(h) for c, h in ev.HASHED.items() if c in df.columns
        )

    monkeypatch.setattr(ev, "_with_hashed_keys", colliding)
    assert run_segment(physio("{op: gte, value: 2}"), ROWS, D) == ["E1", "E3"]
    assert run_segment(physio("{op: eq, value: 0}"), ROWS, D) == ["E4", "E5"]
