"""Groups nested to any depth, include + exclude, and nulls inside `any` and `exclude`.

As-of D = 2024-08-31. The patients:
  Q1 active,   lifetime 1500, age 40, mobile yes, city Sydney,    no next appointment
  Q2 inactive, lifetime  200, age 70, mobile no,  city Melbourne, next appointment booked
  Q3 active,   lifetime 1000, age --, mobile --,  city Sydney,    no next appointment
  Q4 archived, lifetime    0, age 25, mobile yes, city --,        no next appointment
"""

from __future__ import annotations

from datetime import UTC, date, datetime

D = date(2024, 8, 31)
ROWS = {
    "patient_features": [
        dict(patient_id="Q1", status="active", lifetime_value=1500, age=40, has_mobile=True,
             city="Sydney"),
        dict(patient_id="Q2", status="inactive", lifetime_value=200, age=70, has_mobile=False,
             city="Melbourne", next_appointment_at=datetime(2024, 9, 2, 9, tzinfo=UTC)),
        dict(patient_id="Q3", status="active", lifetime_value=1000, age=None, has_mobile=None,
             city="Sydney"),
        dict(patient_id="Q4", status="archived", lifetime_value=0, age=25, has_mobile=True),
    ]
}  # fmt: skip


def test_nested_groups_four_levels_deep(run_segment) -> None:
    yaml_text = """
name: nested
include:
  match: all
  conditions:
    - {field: status, op: in, value: [active, inactive]}
    - match: any
      conditions:
        - {field: lifetime_value, op: gte, value: 1000}
        - match: all
          conditions:
            - {field: age, op: gte, value: 70}
            - match: any
              conditions:
                - {field: has_mobile, op: is_false}
                - {field: city, op: eq, value: Nowhere}
"""
    # Q1, Q3: active and lifetime >= 1000. Q2: inactive, lifetime 200, but age 70 and
    # mobile false satisfy the innermost groups. Q4 is archived.
    assert run_segment(yaml_text, ROWS, D) == ["Q1", "Q2", "Q3"]


def test_match_any_at_top_level(run_segment) -> None:
    yaml_text = """
name: any
include:
  match: any
  conditions:
    - {field: age, op: lt, value: 30}
    - {field: city, op: eq, value: Melbourne}
"""
    # Q4 (age 25) and Q2 (Melbourne); Q3's null age does not make `any` fail for others.
    assert run_segment(yaml_text, ROWS, D) == ["Q2", "Q4"]


def test_include_then_exclude(run_segment) -> None:
    yaml_text = """
name: include-exclude
include:
  match: any
  conditions:
    - {field: status, op: eq, value: active}
    - {field: status, op: eq, value: inactive}
exclude:
  match: any
  conditions:
    - {field: next_appointment_at, op: is_not_null}
    - match: all
      conditions:
        - {field: city, op: eq, value: Sydney}
        - {field: lifetime_value, op: gt, value: 1200}
"""
    # Included: Q1, Q2, Q3. Excluded: Q2 (booked), Q1 (Sydney and 1500 > 1200). Left: Q3.
    assert run_segment(yaml_text, ROWS, D) == ["Q3"]


def test_null_in_exclude_does_not_exclude(run_segment) -> None:
    yaml_text = """
name: null-exclude
include:
  conditions:
    - {field: lifetime_value, op: gte, value: 0}
exclude:
  conditions:
    - {field: age, op: lt, value: 30}
"""
    # Only Q4 (25) is excluded; Q3 has no age, so "age < 30" does not hold for Q3.
    assert run_segment(yaml_text, ROWS, D) == ["Q1", "Q2", "Q3"]


def test_is_false_in_exclude_keeps_unknown(run_segment) -> None:
    yaml_text = """
name: has-mobile-unknown
include:
  conditions:
    - {field: status, op: neq, value: archived}
exclude:
  conditions:
    - {field: has_mobile, op: is_false}
"""
    # Q2 (mobile false) is excluded; Q3's unknown mobile is not "false".
    assert run_segment(yaml_text, ROWS, D) == ["Q1", "Q3"]
