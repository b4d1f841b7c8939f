"""Every field operator, on five hand-written patients; expected members worked by hand.

As-of date D = 2024-08-31 (a leap year: D - 6 months = 2024-02-29).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

D = date(2024, 8, 31)
SYDNEY_CBD = {"lat": -33.8688, "lon": 151.2093}

PATIENTS = [
    dict(
        patient_id="P1", status="active", city="Sydney", lifetime_value=1500, total_visits=10,
        age=40, has_mobile=True, last_visit_date=date(2024, 2, 29),
        appointment_categories_attended=["Physio", "Massage"], diagnosis_codes=["M54.5"],
        latitude=-33.8688, longitude=151.2093,
    ),
    dict(
        patient_id="P2", status="inactive", city="Melbourne", lifetime_value=200,
        total_visits=2, age=70, has_mobile=False, last_visit_date=date(2024, 3, 1),
        # 20:00 UTC on 5 Sep is 06:00 on 6 Sep in Sydney (UTC+10).
        next_appointment_at=datetime(2024, 9, 5, 20, 0, tzinfo=UTC),
        appointment_categories_attended=["Chiro"], diagnosis_codes=[],
        latitude=-37.8136, longitude=144.9631,
    ),
    dict(
        patient_id="P3", status="active", city="sydney", lifetime_value=1000, total_visits=5,
        age=None, has_mobile=None, last_visit_date=date(2023, 8, 31),
        appointment_categories_attended=["physio"],
        latitude=-33.815, longitude=151.001,  # Parramatta, about 20 km from the CBD
    ),
    dict(
        patient_id="P4", status="archived", city=None, lifetime_value=0, total_visits=0,
        age=25, has_mobile=True, appointment_categories_attended=[],
    ),
    dict(
        patient_id="P5", status="prospect", city="Bondi", lifetime_value=0, total_visits=0,
        age=30, has_mobile=None,
        latitude=-33.8915, longitude=151.2767,  # Bondi, about 6.7 km from the CBD
    ),
]  # fmt: skip

CASES = [
    # (condition, expected members, why)
    ("{field: status, op: eq, value: active}", ["P1", "P3"], "exact match"),
    ("{field: city, op: eq, value: sydney}", ["P3"], "eq on text is exact (case-sensitive)"),
    ("{field: status, op: neq, value: active}", ["P2", "P4", "P5"], "all other statuses"),
    ("{field: city, op: neq, value: Sydney}", ["P2", "P3", "P5"], "P4 has no city: no match"),
    ("{field: status, op: in, value: [inactive, archived]}", ["P2", "P4"], "listed values"),
    ("{field: status, op: not_in, value: [active, prospect]}", ["P2", "P4"], "the rest"),
    ("{field: total_visits, op: in, value: [2, 5]}", ["P2", "P3"], "in on numbers"),
    ("{field: total_visits, op: in, value: [2, 5.5]}", ["P2"], "whole and decimal mixed"),
    ("{field: lifetime_value, op: in, value: [1000, 200.0]}", ["P2", "P3"], "money"),
    ("{field: total_visits, op: not_in, value: [0, 10]}", ["P2", "P3"], "not_in on numbers"),
    ("{field: city, op: in, value: [Sydney, Bondi]}", ["P1", "P5"], "in on text is exact"),
    ("{field: lifetime_value, op: gt, value: 1000}", ["P1"], "P3 has exactly 1000"),
    ("{field: lifetime_value, op: gte, value: 1000}", ["P1", "P3"], "1000 itself counts"),
    ("{field: total_visits, op: lt, value: 2}", ["P4", "P5"], "0 and 0"),
    ("{field: total_visits, op: lte, value: 2}", ["P2", "P4", "P5"], "2 itself counts"),
    ("{field: age, op: between, value: [30, 70]}", ["P1", "P2", "P5"], "inclusive: 70, 30"),
    ("{field: age, op: between, value: [70, 30]}", ["P1", "P2", "P5"], "bounds in any order"),
    ("{field: age, op: is_null}", ["P3"], "only P3 has no age"),
    ("{field: age, op: is_not_null}", ["P1", "P2", "P4", "P5"], "everyone else"),
    ("{field: has_mobile, op: is_true}", ["P1", "P4"], "true only"),
    ("{field: has_mobile, op: is_false}", ["P2"], "null is neither true nor false"),
    ("{field: has_mobile, op: eq, value: false}", ["P2"], "eq on a boolean"),
    ("{field: city, op: contains, value: SYD}", ["P1", "P3"], "case-insensitive substring"),
    ("{field: city, op: starts_with, value: bon}", ["P5"], "case-insensitive prefix"),
    (
        "{field: appointment_categories_attended, op: contains_any, value: [PHYSIO, chiro]}",
        ["P1", "P2", "P3"],
        "any listed element, case-insensitive; P4 has [], P5 null",
    ),
    (
        "{field: appointment_categories_attended, op: contains_all, value: [physio, massage]}",
        ["P1"],
        "both elements",
    ),
    ("{field: diagnosis_codes, op: is_null}", ["P2", "P3", "P4", "P5"], "empty list or null"),
    ("{field: diagnosis_codes, op: is_not_null}", ["P1"], "a non-empty list"),
    (
        "{field: location, op: within_km, value: {lat: -33.8688, lon: 151.2093, km: 10}}",
        ["P1", "P5"],
        "CBD 0 km, Bondi 6.7 km; Parramatta 20 km, Melbourne, and P4 without coordinates not",
    ),
    (
        "{field: location, op: within_km, value: {lat: -33.8688, lon: 151.2093, km: 25}}",
        ["P1", "P3", "P5"],
        "Parramatta now inside",
    ),
    # Dates relative to D = 2024-08-31: -6 months = 2024-02-29, -12 months = 2023-08-31.
    ('{field: last_visit_date, op: eq, value: "-6 months"}', ["P1"], "31 Aug - 6 mo = 29 Feb"),
    ('{field: last_visit_date, op: lt, value: "-6 months"}', ["P3"], "2023-08-31 only"),
    ('{field: last_visit_date, op: gte, value: "-6 months"}', ["P1", "P2"], "29 Feb, 1 Mar"),
    (
        '{field: last_visit_date, op: between, value: ["-12 months", "-6 months"]}',
        ["P1", "P3"],
        "both boundaries inside; P2 (1 Mar) one day past",
    ),
    ("{field: last_visit_date, op: eq, value: 2024-02-29}", ["P1"], "an unquoted ISO date"),
    ('{field: last_visit_date, op: eq, value: "2024-03-01"}', ["P2"], "a quoted ISO date"),
    (
        '{field: last_visit_date, op: lte, value: "-26 weeks"}',
        ["P1", "P2", "P3"],
        "-26 w = -182 d = 2024-03-02",
    ),
    ('{field: last_visit_date, op: gt, value: "-27 weeks"}', ["P1", "P2"], "after 2024-02-24"),
    ('{field: last_visit_date, op: gt, value: "-1 year"}', ["P1", "P2"], "after 2023-08-31"),
    ('{field: last_visit_date, op: lt, value: "-184 days"}', ["P3"], "-184 d = 2024-02-29"),
    # P2's next appointment is on 5 Sep in UTC (= D + 5 days).
    ('{field: next_appointment_at, op: eq, value: "+5 days"}', ["P2"], "the UTC date"),
    ('{field: next_appointment_at, op: gt, value: "+5 days"}', [], "not after its own day"),
    ("{field: next_appointment_at, op: gte, value: today}", ["P2"], "today or later"),
]


@pytest.mark.parametrize(("condition", "expected", "why"), CASES, ids=[c[0] for c in CASES])
def test_operator(run_segment, condition: str, expected: list[str], why: str) -> None:
    yaml_text = f"name: t\ninclude:\n  conditions:\n    - {condition}\n"
    assert run_segment(yaml_text, {"patient_features": PATIENTS}, D) == expected, why


def test_timestamp_conditions_use_the_clinic_time_zone(run_segment) -> None:
    # 2024-09-05 20:00 UTC is 2024-09-06 06:00 in Sydney: D + 6 days there, D + 5 in UTC.
    yaml_text = (
        "name: t\ninclude:\n  conditions:\n"
        '    - {field: next_appointment_at, op: eq, value: "+6 days"}\n'
    )
    rows = {"patient_features": PATIENTS}
    assert run_segment(yaml_text, rows, D, timezone="Australia/Sydney") == ["P2"]
    assert run_segment(yaml_text, rows, D, timezone="UTC") == []


def test_month_steps_clamp_in_a_common_year(run_segment) -> None:
    # D = 2023-08-31: -6 months is 2023-02-28 (no 29 Feb in 2023).
    rows = {
        "patient_features": [
            dict(patient_id="A", last_visit_date=date(2023, 2, 28)),
            dict(patient_id="B", last_visit_date=date(2023, 3, 1)),
            dict(patient_id="C", last_visit_date=date(2023, 2, 27)),
        ]
    }
    yaml_text = (
        "name: t\ninclude:\n  conditions:\n"
        '    - {field: last_visit_date, op: eq, value: "-6 months"}\n'
    )
    assert run_segment(yaml_text, rows, date(2023, 8, 31)) == ["A"]
    # From 29 Feb 2024 one year back clamps to 28 Feb 2023; forward to 28 Feb 2025.
    back = yaml_text.replace("-6 months", "-1 year")
    assert run_segment(back, rows, date(2024, 2, 29)) == ["A"]


def test_plus_offsets_and_between_on_days_until_birthday(run_segment) -> None:
    rows = {
        "patient_features": [
            dict(patient_id="T0", days_until_birthday=0),
            dict(patient_id="T7", days_until_birthday=7),
            dict(patient_id="T8", days_until_birthday=8),
            dict(patient_id="TN", days_until_birthday=None),
        ]
    }
    yaml_text = (
        "name: t\ninclude:\n  conditions:\n"
        "    - {field: days_until_birthday, op: between, value: [0, 7]}\n"
    )
    # Inclusive at both ends: 0 and 7 are in, 8 and null are not.
    assert run_segment(yaml_text, rows, D) == ["T0", "T7"]
