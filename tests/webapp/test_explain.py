"""Why is this patient in: for every patient of a real small clinic, the explanation's
verdict is exactly membership as evaluation computes it, and its reasons are the ones the
definition names."""

from __future__ import annotations

import pytest

from tests.webapp.conftest import DAY, shipped

SEGMENTS = [
    "lapsed-physio-6-12mo",        # fields, with an exclude
    "high-value-not-rebooked-90d",  # money and dates
    "seminar-attendees-never-booked",  # events conditions
    "cases-last-session",           # a case segment
    "orphaned-patients",
]


@pytest.fixture
def loaded(settings):
    from core.warehouse import Warehouse
    from segments.evaluate import WarehouseFrames
    from segments.library import default_catalogue

    catalogue = default_catalogue(settings.duckdb_path)
    frames = WarehouseFrames(Warehouse(settings.duckdb_path))
    return catalogue, frames


@pytest.mark.parametrize("slug", SEGMENTS)
def test_the_verdict_of_every_explanation_is_membership(loaded, settings, slug):
    from segments.evaluate import evaluate
    from segments.explain import explain
    from segments.validation import load_segment

    catalogue, frames = loaded
    d = load_segment(shipped(slug), catalogue).definition
    members = evaluate(d, frames, catalogue, DAY, settings.clinic_timezone)
    expected = {(p, c) for p, c in members.select("patient_id", "case_id").rows()}
    patients = frames.frame("patient_features", ["patient_id"])["patient_id"].to_list()
    got = set()
    for patient in patients:
        for e in explain(d, frames, catalogue, DAY, settings.clinic_timezone, patient):
            assert e.found
            if e.member:
                got.add((e.patient_id, e.case_id))
    assert got == expected
    assert expected, f"{slug} has no members in the test clinic: the test would prove little"


def test_an_excluded_patient_is_told_which_exclude_condition_knocked_them_out(loaded, settings):
    from segments.explain import explain
    from segments.validation import load_segment

    catalogue, frames = loaded
    patients = frames.frame("patient_features", ["patient_id"])["patient_id"].to_list()
    seen = 0
    for slug in ("lapsed-physio-6-12mo", "orphaned-patients", "high-value-not-rebooked-90d"):
        d = load_segment(shipped(slug), catalogue).definition
        for patient in patients:
            (e,) = explain(d, frames, catalogue, DAY, settings.clinic_timezone, patient)
            if e.include.passed and not e.member:
                seen += 1
                assert e.excluded_by and all(n.passed for n in e.excluded_by)
                # The reason is a condition of the definition's own exclude block.
                fields = [getattr(c, "field", "") for c in d.exclude.conditions]
                assert all(any(f and f in n.label for f in fields) for n in e.excluded_by)
    assert seen, "no patient passed include and was excluded in these segments"


def test_a_patient_the_marts_do_not_hold_is_not_found(loaded, settings):
    from segments.explain import explain
    from segments.validation import load_segment

    catalogue, frames = loaded
    d = load_segment(shipped("lapsed-physio-6-12mo"), catalogue).definition
    (e,) = explain(d, frames, catalogue, DAY, settings.clinic_timezone, "no-such-patient")
    assert not e.found and not e.member
