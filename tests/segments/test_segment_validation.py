"""Bad definitions: each gives one clear error naming the file and the path inside it,
with a way to fix it, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from segments.field_catalogue import Catalogue
from segments.validation import (
    SegmentValidationError,
    load_segment,
    load_segments,
    parse_definition,
    read_yaml,
)

OK = "    - {field: age, op: gte, value: 3}\n"
HEAD = "name: t\ninclude:\n  conditions:\n"

BAD = [
    # (id, definition, expected path, expected words in the message)
    (
        "unknown field, nested, with suggestion",
        HEAD + "    - {field: status, op: eq, value: active}\n    - match: any\n"
        "      conditions:\n        - {field: last_vist_date, op: is_null}\n",
        "include.conditions[1].conditions[0].field",
        ["unknown field 'last_vist_date'", "did you mean last_visit_date"],
    ),
    (
        "operator not valid for a text field",
        HEAD + "    - {field: status, op: gt, value: 3}\n",
        "include.conditions[0].op",
        ["'gt' does not apply to 'status' (text)", "use one of eq, neq, in, not_in"],
    ),
    (
        "operator that does not exist",
        HEAD + "    - {field: status, op: equals, value: active}\n",
        "include.conditions[0].op",
        ["'equals' is not a valid choice", "did you mean eq?"],
    ),
    (
        "text where a number is needed",
        HEAD + "    - {field: lifetime_value, op: gte, value: 'lots'}\n",
        "include.conditions[0].value",
        ["'lots' is not a number", "write it without quotes"],
    ),
    (
        "number where text is needed",
        HEAD + "    - {field: post_code, op: eq, value: 2000}\n",
        "include.conditions[0].value",
        ["2000 is a number but 'post_code' is text", "quote it: '2000'"],
    ),
    (
        "bad relative date",
        HEAD + "    - {field: last_visit_date, op: lt, value: '-6 monts'}\n",
        "include.conditions[0].value",
        ["'-6 monts' is not a date", "'-6 months'"],
    ),
    (
        "a number where a date is needed",
        HEAD + "    - {field: last_visit_date, op: gt, value: 30}\n",
        "include.conditions[0].value",
        ["30 is not a date for 'last_visit_date'"],
    ),
    (
        "empty group",
        HEAD + "    - match: any\n      conditions: []\n",
        "include.conditions[0].conditions",
        ["empty group", "add at least one condition"],
    ),
    (
        "unknown event field",
        HEAD + "    - events: appointments\n      where:\n        conditions:\n"
        "          - {field: categroy, op: eq, value: Physio}\n",
        "include.conditions[0].where.conditions[0].field",
        ["unknown field 'categroy'", "did you mean category?"],
    ),
    (
        "unknown event kind",
        HEAD + "    - events: payments\n",
        "include.conditions[0].events",
        ["'payments' is not a valid choice", "appointments, invoices, leads, diagnoses"],
    ),
    (
        "between with one bound",
        HEAD + "    - {field: age, op: between, value: [30]}\n",
        "include.conditions[0].value",
        ["between needs two bounds"],
    ),
    (
        "is_null with a value",
        HEAD + "    - {field: age, op: is_null, value: 3}\n",
        "include.conditions[0].value",
        ["is_null takes no value", "remove `value`"],
    ),
    (
        "missing value",
        HEAD + "    - {field: age, op: gte}\n",
        "include.conditions[0].value",
        ["gte needs a value"],
    ),
    (
        "misspelt key",
        HEAD + "    - {field: age, op: gte, value: 3, vaule: 4}\n",
        "include.conditions[0].vaule",
        ["unknown key 'vaule'", "did you mean value?"],
    ),
    (
        "missing name",
        "include:\n  conditions:\n" + OK,
        "name",
        ["missing required key 'name'"],
    ),
    (
        "private without owner",
        "name: t\nvisibility: private\ninclude:\n  conditions:\n" + OK,
        "owner",
        ["a private segment needs an owner"],
    ),
    (
        "negative count",
        HEAD + "    - events: appointments\n      count: {op: gte, value: -1}\n",
        "include.conditions[0].count.value",
        ["-1 is not a count", "whole number >= 0"],
    ),
    (
        "bad window date",
        HEAD + "    - events: appointments\n      within: {from: yesterday}\n",
        "include.conditions[0].within.from",
        ["'yesterday' is not a date"],
    ),
    (
        "latitude out of range",
        HEAD + "    - {field: location, op: within_km, value: {lat: -95, lon: 151, km: 5}}\n",
        "include.conditions[0].value.lat",
        ["-95 is not a valid lat", "[-90, 90]"],
    ),
    (
        "not a condition at all",
        HEAD + "    - {fild: age, opp: gte}\n",
        "include.conditions[0]",
        ["not a condition", "Unknown key 'fild' (did you mean field"],
    ),
    (
        "workflow terminal stage not in stages",
        HEAD + OK + "workflow:\n  stages: [A, B]\n  terminal: [C]\n",
        "workflow.terminal[0]",
        ["'C' is not one of the stages"],
    ),
    (
        "workflow stages repeated",
        HEAD + OK + "workflow:\n  stages: [A, A]\n",
        "workflow.stages",
        ["listed twice"],
    ),
    (
        "workflow without stages",
        HEAD + OK + "workflow:\n  stages: []\n",
        "workflow.stages",
        ["stages is empty"],
    ),
    (
        "workflow on_booking not a stage",
        HEAD + OK + "workflow:\n  stages: [A]\n  on_booking: Booked\n",
        "workflow.on_booking",
        ["'Booked' is not one of the stages"],
    ),
    (
        "case field in a patient segment",
        HEAD + "    - {field: sessions_left, op: lte, value: 1}\n",
        "include.conditions[0].field",
        ["'sessions_left' is a field of case segments", "entity: case"],
    ),
    (
        "in without a list",
        HEAD + "    - {field: status, op: in, value: active}\n",
        "include.conditions[0].value",
        ["in needs a non-empty list"],
    ),
    (
        "text for a boolean",
        HEAD + "    - {field: has_email, op: eq, value: 'yes'}\n",
        "include.conditions[0].value",
        ["'yes' is not true / false"],
    ),
    (
        "string operator on a list field",
        HEAD + "    - {field: diagnosis_codes, op: contains, value: M54}\n",
        "include.conditions[0].op",
        ["'contains' does not apply to 'diagnosis_codes'", "contains_any"],
    ),
    (
        "duplicate key",
        "name: t\nname: u\ninclude:\n  conditions:\n" + OK,
        "line 2",
        ["duplicate key 'name'"],
    ),
    (
        "unknown entity",
        "name: t\nentity: practitioner\ninclude:\n  conditions:\n" + OK,
        "entity",
        ["'practitioner' is not a valid choice", "patient, case"],
    ),
    (
        "exclude is checked too",
        HEAD + OK + "exclude:\n  conditions:\n    - {field: nxt_appointment_at, op: is_null}\n",
        "exclude.conditions[0].field",
        ["did you mean next_appointment_at"],
    ),
]


@pytest.mark.parametrize(("text", "path", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_definition(tmp_path: Path, catalogue: Catalogue, text, path, words) -> None:
    file = tmp_path / "bad-segment.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(SegmentValidationError) as raised:
        load_segment(file, catalogue)
    issues = raised.value.issues
    assert len(issues) == 1, [str(i) for i in issues]
    issue = issues[0]
    assert issue.file == str(file)
    assert issue.path == path
    for w in words:
        assert w in issue.message
    # The printed form names file and path first.
    assert str(issue).startswith(f"{file}: {path}: ")


def test_all_problems_of_a_file_are_reported_together(catalogue: Catalogue) -> None:
    text = (
        HEAD + "    - {field: agee, op: gte, value: 3}\n    - {field: status, op: lt, value: 1}\n"
    )
    with pytest.raises(SegmentValidationError) as raised:
        parse_definition(read_yaml(text, "two.yaml"), "two.yaml", catalogue)
    assert [i.path for i in raised.value.issues] == [
        "include.conditions[0].field",
        "include.conditions[1].op",
    ]


def test_values_are_data_not_sql(tmp_path: Path, catalogue: Catalogue, make_warehouse) -> None:
    """A value that looks like SQL is just a string that matches nobody."""
    from datetime import date

    from segments.evaluate import WarehouseFrames, evaluate

    db = make_warehouse(tmp_path / "wh.duckdb", {"patient_features": [dict(patient_id="P1")]})
    text = (
        HEAD
        + '    - {field: status, op: eq, value: "x\'; drop table marts.patient_features; --"}\n'
    )
    d = parse_definition(read_yaml(text, "t.yaml"), "t.yaml", catalogue)
    assert evaluate(d, WarehouseFrames(db), catalogue, date(2024, 1, 1), "UTC").height == 0
    assert WarehouseFrames(db).frame("patient_features", ["patient_id"]).height == 1


def test_bad_slug_and_duplicate_slugs(tmp_path: Path, catalogue: Catalogue) -> None:
    good = "name: t\ninclude:\n  conditions:\n" + OK
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "same.yaml").write_text(good)
    (tmp_path / "b" / "same.yaml").write_text(good)
    with pytest.raises(SegmentValidationError) as raised:
        load_segments([tmp_path / "a", tmp_path / "b"], catalogue)
    assert "slug 'same' is already defined by" in str(raised.value)
    bad = tmp_path / "Bad Name.yaml"
    bad.write_text(good)
    with pytest.raises(SegmentValidationError, match="is not a valid slug"):
        load_segment(bad, catalogue)
