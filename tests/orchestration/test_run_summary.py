"""The closing summary of `audiences run`: it says what became of the plan, and shows
private segments to nobody."""

from __future__ import annotations

from datetime import date

import duckdb
from rich.console import Console

from clinic_audiences.runner import print_summary


def warehouse(path, dry_run: bool, reason: str = "") -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute("create schema segments")
        con.execute(
            "create table segments.membership as select * from (values "
            "('lapsed-physio-6-12mo', 'p1'), ('lapsed-physio-6-12mo', 'p2'), "
            "('practitioner-own-physio-pipeline', 'p9')) t(segment_slug, patient_id)"
        )
        con.execute("create schema outbound")
        con.execute(
            "create table outbound.send_plan as select * from (values "
            "('reactivation', 'send', date '2026-12-01'), ('reactivation', 'send', date "
            "'2026-12-01'), ('reactivation', 'suppressed', date '2026-12-01')) "
            "t(campaign, decision, as_of)"
        )
        con.execute(
            "create table outbound.send_report as select * from (values "
            "('reactivation', 2, 0, ?, ?, date '2026-12-01')) "
            "t(campaign, sent, failed, dry_run, dry_run_reason, send_date)",
            [dry_run, reason],
        )
    finally:
        con.close()


def summary(path, monkeypatch) -> str:
    monkeypatch.delenv("SEGMENTS_PATH", raising=False)
    console = Console(record=True, width=120)
    print_summary(path, console)
    return console.export_text()


def test_a_sent_plan_is_titled_as_sent_with_its_counts(tmp_path, monkeypatch):
    warehouse(tmp_path / "w.duckdb", dry_run=False)
    text = summary(tmp_path / "w.duckdb", monkeypatch)
    assert "Sent for 2026-12-01" in text and "dry run" not in text
    row = next(line for line in text.splitlines() if line.strip().startswith("reactivation"))
    assert [cell.strip() for cell in row.split("│")[1:]] == ["2", "1", "0", "2", "0"]


def test_a_dry_run_says_why(tmp_path, monkeypatch):
    reason = "sending is for the clinic's today only (2026-12-02 in UTC)"
    warehouse(tmp_path / "w.duckdb", dry_run=True, reason=reason)
    text = summary(tmp_path / "w.duckdb", monkeypatch)
    assert f"Send plan for {date(2026, 12, 1)} (dry run: {reason})" in " ".join(text.split())


def test_private_segments_are_counted_but_not_named(tmp_path, monkeypatch):
    warehouse(tmp_path / "w.duckdb", dry_run=True)
    text = summary(tmp_path / "w.duckdb", monkeypatch)
    assert "lapsed-physio-6-12mo" in text
    # The shipped practitioner pipeline is private to its owner.
    assert "practitioner-own-physio-pipeline" not in text
    assert "and 1 private segment(s), shown to their owners only" in text


def test_step_lines_do_not_name_private_segments():
    import logging
    from types import SimpleNamespace

    from clinic_audiences.runner import ProgressHandler, private_step_keys

    hidden = private_step_keys()
    assert "segments__practitioner_own_physio_pipeline" in hidden
    console = Console(record=True, width=120)
    handler = ProgressHandler(console, hidden)
    for step in ("segments__practitioner_own_physio_pipeline", "segments__waitlist"):
        record = logging.LogRecord("x", logging.INFO, "", 0, "", None, None)
        record.dagster_meta = {
            "dagster_event": SimpleNamespace(event_type_value="STEP_START"),
            "step_key": step,
        }
        handler.emit(record)
    text = console.export_text()
    assert "practitioner" not in text
    assert "(a private segment or work list)" in text and "segments__waitlist" in text


def test_a_private_step_that_fails_does_not_show_its_message():
    import logging
    from types import SimpleNamespace

    from clinic_audiences.runner import ProgressHandler

    console = Console(record=True, width=200)
    handler = ProgressHandler(console, {"segments__sam_secret_oncology"})
    for step in ("segments__sam_secret_oncology", "segments__waitlist"):
        record = logging.LogRecord("x", logging.ERROR, "", 0, "", None, None)
        failure = SimpleNamespace(user_failure_data=SimpleNamespace(
            description=f"/defs/{step.removeprefix('segments__')}.yaml: include: bad"))
        record.dagster_meta = {
            "dagster_event": SimpleNamespace(event_type_value="STEP_FAILURE",
                                             step_failure_data=failure),
            "step_key": step,
        }  # fmt: skip
        handler.emit(record)
    text = console.export_text()
    assert "secret" not in text and "secret" not in " ".join(handler.failures)
    assert "(a private segment or work list): failed; its owner sees why" in text
    assert "segments__waitlist: /defs/waitlist.yaml: include: bad" in text
