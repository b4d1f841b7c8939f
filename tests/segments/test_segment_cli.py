"""The segment CLI functions against a real warehouse file, settings from the environment."""

from __future__ import annotations

import json
import logging
import os
from datetime import date
from pathlib import Path

import pytest

from clinic_audiences.segment_commands import (
    cmd_members,
    cmd_preview,
    cmd_resnapshot,
    cmd_segments_list,
    cmd_validate,
)
from core.settings import Settings
from segments.evaluate import WarehouseFrames
from segments.field_catalogue import Catalogue
from segments.library import materialise, state_engine
from segments.validation import load_segment

ROWS = {
    "patient_features": [
        dict(patient_id="P1", first_name="Ada", last_name="Lovelace", status="active",
             lifetime_value=1500),
        dict(patient_id="P2", first_name="Alan", last_name="Turing", status="active",
             lifetime_value=10),
        dict(patient_id="P3", first_name="Grace", last_name="Hopper", status="inactive",
             lifetime_value=5000),
    ]
}  # fmt: skip
MINE = """
name: Sam's big spenders
visibility: private
owner: sam@clinic.example
include:
  conditions: [{field: lifetime_value, op: gte, value: 1000}]
"""
SHARED = """
name: Active
include:
  conditions: [{field: status, op: eq, value: active}]
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch, make_warehouse) -> Path:
    folder = tmp_path / "segs"
    folder.mkdir()
    (folder / "sams-list.yaml").write_text(MINE)
    (folder / "active.yaml").write_text(SHARED)
    db = make_warehouse(tmp_path / "wh.duckdb", ROWS)
    monkeypatch.setenv("DUCKDB_PATH", str(db))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("SEGMENTS_PATH", str(folder))
    monkeypatch.setenv("CLINIC_TIMEZONE", "UTC")
    return folder


def run_all(catalogue: Catalogue, as_of: date) -> None:
    settings = Settings.from_environ(os.environ)
    engine = state_engine(settings.state_db_url)
    for slug in ("sams-list", "active"):
        seg = load_segment(settings.segments_path / f"{slug}.yaml", catalogue)
        materialise(seg, WarehouseFrames(settings.duckdb_path), catalogue,
                    settings.duckdb_path, engine, as_of, "UTC")  # fmt: skip


def test_validate_library_and_files(env: Path, tmp_path: Path, capsys) -> None:
    # The shipped library plus SEGMENTS_PATH validate against the dbt catalogue.
    assert cmd_validate([]) == 0
    out = capsys.readouterr().out
    assert "ok  lapsed-physio-6-12mo" in out and "ok  sams-list" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\ninclude:\n  conditions:\n    - {field: statuss, op: eq, value: x}\n")
    assert cmd_validate([str(bad), str(env)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}: include.conditions[0].field: unknown field 'statuss'" in out
    assert "1 problem(s) found" in out


def test_preview_an_unsaved_file(env: Path, tmp_path: Path, capsys, caplog) -> None:
    draft = tmp_path / "My draft (v2).yaml"  # a draft need not have a valid slug
    draft.write_text(SHARED)
    with caplog.at_level(logging.DEBUG):
        assert cmd_preview(str(draft), "2024-08-31") == 0
    out = capsys.readouterr().out
    assert "members: 2" in out
    assert "evaluated in" in out and " ms" in out
    assert "Ada" in out and "Alan" in out and "Grace" not in out
    # Patient data goes to stdout only, never to logs.
    assert "Ada" not in caplog.text and "P1" not in caplog.text


def test_preview_reports_validation_errors(env: Path, tmp_path: Path, capsys) -> None:
    draft = tmp_path / "draft.yaml"
    draft.write_text(
        "name: d\ninclude:\n  conditions:\n    - {field: age, op: contains, value: 3}\n"
    )
    assert cmd_preview(str(draft), None) == 1
    assert "include.conditions[0].op" in capsys.readouterr().out


def test_members_and_private_visibility(env: Path, catalogue: Catalogue, capsys) -> None:
    run_all(catalogue, date(2024, 8, 31))
    assert cmd_members("active", "csv", None) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("patient_id,case_id,first_name,last_name,entered_at")
    assert [ln.split(",")[0] for ln in lines[1:]] == ["P1", "P2"]

    # Sam sees the private list; others (and anonymous) are told it does not exist.
    assert cmd_members("sams-list", "json", "sam@clinic.example") == 0
    members = json.loads(capsys.readouterr().out)
    assert [m["patient_id"] for m in members] == ["P1", "P3"]
    assert cmd_members("sams-list", "json", "priya@clinic.example") == 1
    out = capsys.readouterr().out
    assert "no segment 'sams-list'" in out and "P1" not in out
    assert cmd_members("sams-list", "csv", None) == 1
    capsys.readouterr()

    assert cmd_segments_list("sam@clinic.example") == 0
    out = capsys.readouterr().out
    assert "sams-list" in out and "active" in out
    assert cmd_segments_list("priya@clinic.example") == 0
    out = capsys.readouterr().out
    assert "sams-list" not in out and "active" in out and "lapsed-physio-6-12mo" in out
    # The shipped provider example is private to its owner too.
    assert "practitioner-own-physio-pipeline" not in out


def test_members_before_any_run(env: Path, capsys) -> None:
    assert cmd_members("active", "csv", None) == 1
    assert "has not been materialised" in capsys.readouterr().out


def test_resnapshot_command_refuses_dynamic(env: Path, capsys) -> None:
    assert cmd_resnapshot("active") == 1
    assert "dynamic" in capsys.readouterr().out


def test_preview_pairs_each_member_with_their_own_columns(env: Path, catalogue: Catalogue) -> None:
    from segments.library import preview

    settings = Settings.from_environ(os.environ)
    seg = load_segment(settings.segments_path / "sams-list.yaml", catalogue)
    # Only the columns the definition reads are loaded first, as in a preview of a draft.
    frames = WarehouseFrames(settings.duckdb_path)
    frames.prepare([seg.definition])
    result = preview(seg, frames, catalogue, date(2024, 8, 31), "UTC")
    assert result.count == 2
    assert result.sample.select("patient_id", "first_name", "lifetime_value").rows() == [
        ("P1", "Ada", 1500.0),
        ("P3", "Grace", 5000.0),
    ]
