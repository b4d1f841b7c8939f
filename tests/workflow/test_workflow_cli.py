"""`audiences worklist ...` through the functions the CLI dispatches to, on real files."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from clinic_audiences import worklist_commands as cli
from workflow.api import move, sync_worklist
from workflow.planning import Member
from workflow.worklist_files import load_worklists

SEGMENT = """\
name: CLI front desk
owner: {owner}
visibility: {visibility}
include:
  match: all
  conditions:
    - {{field: status, op: eq, value: active}}
workflow:
  stages: [To call, Left voicemail, Booked, Not interested]
  terminal: [Booked, Not interested]
  default_assignee: sam@clinic.example
"""

NAMED = """\
segment: cli-front-desk
workflow:
  stages: [To chase, Paid]
  terminal: [Paid]
"""


@pytest.fixture
def env(
    tmp_path: Path,
    state_url: str,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    day: Callable[..., datetime],
) -> Engine:
    segments = tmp_path / "segments"
    segments.mkdir()
    (segments / "cli-front-desk.yaml").write_text(
        SEGMENT.format(owner="desk@clinic.example", visibility="shared")
    )
    (segments / "cli-mine.yaml").write_text(
        SEGMENT.format(owner="dr.lee@clinic.example", visibility="private")
    )
    named = tmp_path / "worklists"
    named.mkdir()
    (named / "cli-billing.yaml").write_text(NAMED)
    monkeypatch.setenv("SEGMENTS_PATH", str(segments))
    monkeypatch.setenv("WORKLISTS_PATH", str(named))
    monkeypatch.setenv("STATE_DB_URL", state_url)
    monkeypatch.setenv("CLINIC_TIMEZONE", "Australia/Sydney")

    from segments.library import library_folders

    lists = load_worklists(library_folders(segments), named)
    desk, mine, billing = lists["cli-front-desk"], lists["cli-mine"], lists["cli-billing"]
    assert (billing.segment_slug, billing.spec.stages) == ("cli-front-desk", ["To chase", "Paid"])
    three = [Member("p1", "p1"), Member("p2", "p2"), Member("p3", "p3")]
    for wl in (desk, mine, billing):
        sync_worklist(engine, wl, three, now=day(0))
    # 2026-03-02 11:00 UTC is 22:00 in Sydney (UTC+11 in March).
    move(engine, desk, "p2", "Left voicemail", by="ann", now=day(0, 2))
    sync_worklist(engine, desk, three[:2], now=day(1))
    return engine


def test_show_table_lists_members_then_those_who_left(
    env: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.cmd_show("cli-front-desk", None, None, "table", None) == 0
    assert capsys.readouterr().out == (
        "cli-front-desk: 2 in the segment\n"
        "patient_id  stage           assignee            due  last_touch\n"
        "p1          To call         sam@clinic.example  -    -\n"
        "p2          Left voicemail  sam@clinic.example  -    2026-03-02 22:00\n"
        "\n"
        "left the segment (1):\n"
        "patient_id  stage    assignee            due  last_touch\n"
        "p3          To call  sam@clinic.example  -    -\n"
    )


def test_show_csv_with_a_stage_filter(env: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_show("cli-front-desk", "to call", None, "csv", None) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["member_id"], r["stage"], r["left_segment"], r["last_touch_at"]) for r in rows] == [
        ("p1", "To call", "false", ""),
        ("p3", "To call", "true", ""),
    ]
    assert rows[0]["assignee"] == "sam@clinic.example"


def test_move_assign_note_then_history(env: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_move("cli-front-desk", "p2", "booked", "bea", "booked for Tue") == 0
    assert capsys.readouterr().out == "p2: Left voicemail -> Booked (by bea)\n"
    assert cli.cmd_assign("cli-front-desk", "p2", "kim@clinic.example", "bea") == 0
    assert capsys.readouterr().out == "p2: assigned to kim@clinic.example (by bea)\n"
    assert cli.cmd_note("cli-front-desk", "p2", "confirm by SMS", "kim@clinic.example") == 0
    capsys.readouterr()

    assert cli.cmd_history("cli-front-desk", "p2", None) == 0
    lines = capsys.readouterr().out.splitlines()
    # Header + entered + ann's move + bea's move + assignment + note, oldest first.
    assert len(lines) == 6
    assert lines[0].split() == ["#", "at", "by", "event", "from", "to", "assignee", "note"]
    assert lines[1].split()[:7] == ["1", "2026-03-02", "20:00", "system", "entered", "-", "To"]
    assert lines[2].split()[3:5] == ["ann", "moved"]
    assert lines[3].split()[3:5] == ["bea", "moved"] and lines[3].endswith("booked for Tue")
    assert lines[4].split()[3:5] == ["bea", "assigned"] and "kim@clinic.example" in lines[4]
    assert lines[5].split()[0] == "5" and lines[5].endswith("confirm by SMS")


def test_counts(env: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_counts("cli-front-desk", None) == 0
    # p1 To call, p2 Left voicemail, p3 left from To call -> open = 1 + 1.
    assert capsys.readouterr().out == (
        "stage           members  left_segment  terminal\n"
        "To call         1        1\n"
        "Left voicemail  1        0\n"
        "Booked          0        0             yes\n"
        "Not interested  0        0             yes\n"
        "open (not in a terminal stage): 2\n"
    )


def test_named_work_list_has_its_own_stages(
    env: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.cmd_move("cli-billing", "p1", "Paid", "kim", None) == 0
    assert capsys.readouterr().out == "p1: To chase -> Paid (by kim)\n"
    assert cli.cmd_move("cli-billing", "p1", "Booked", "kim", None) == 1
    assert "stage 'Booked' does not exist; the stages are: To chase, Paid" in (
        capsys.readouterr().err
    )


def test_refusals_are_clear_and_exit_1(env: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_move("cli-front-desk", "p1", "Called", "ann", None) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: stage 'Called' does not exist; the stages are: "
        "To call, Left voicemail, Booked, Not interested\n"
    )
    # Someone else's private work list does not exist for ann, not even by name.
    assert cli.cmd_show("cli-mine", None, None, "table", "ann") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no work list 'cli-mine'; work lists: ")
    assert err.count("cli-mine") == 1
    assert cli.cmd_move("cli-mine", "p1", "Booked", "ann", None) == 1
    assert capsys.readouterr().err.startswith("error: no work list 'cli-mine'")
    assert cli.cmd_counts("nope", "ann") == 1
    assert "cli-mine" not in capsys.readouterr().err
    assert cli.cmd_show("cli-mine", None, None, "table", "dr.lee@clinic.example") == 0
    assert capsys.readouterr().out.startswith("cli-mine: 3 in the segment\n")
    assert cli.cmd_move("cli-front-desk", "p9", "Booked", "ann", None) == 1
    assert "'p9' is not on work list 'cli-front-desk'" in capsys.readouterr().err
    assert cli.cmd_counts("nope", None) == 1
    assert "no work list 'nope'" in capsys.readouterr().err
    assert cli.cmd_show("cli-front-desk", None, None, "xlsx", None) == 1
    assert "--format 'xlsx' is not known" in capsys.readouterr().err
