"""Definition files a user can write never end in a traceback, always name their file
and place, and one bad file never stops the other segments."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from clinic_audiences.segment_commands import cmd_members, cmd_resnapshot, cmd_validate
from core.settings import Settings
from orchestration.resources import ClinicSettingsResource, StateStoreResource, WarehouseResource
from orchestration.segments import build_segment_assets
from segments.evaluate import WarehouseFrames
from segments.field_catalogue import Catalogue
from segments.library import load_library, materialise, state_engine
from segments.validation import SegmentValidationError, load_segment

HEAD = "name: t\ninclude:\n  conditions:\n"
GOOD = HEAD + "    - {field: status, op: eq, value: active}\n"
ROWS = {
    "patient_features": [
        dict(patient_id="P1", first_name="Ada", status="active", lifetime_value=1500),
        dict(patient_id="P2", first_name="Alan", status="inactive", lifetime_value=10),
    ]
}

FILES = {
    # (file content, the place named, words of the message)
    "impossible-date": (
        HEAD + "    - {field: last_visit_date, op: lt, value: 2024-02-30}\n",
        "include.conditions[0].value",
        "'2024-02-30' is not a date",
    ),
    "latin1": (
        (HEAD + "    - {field: first_name, op: eq, value: Ren\xe9}\n").encode("latin-1"),
        "line 4",
        "byte 0xe9 is not UTF-8 text; save the file as UTF-8",
    ),
    "unhashable-key": (
        HEAD + "    - ? [field, op]\n      : x\n", "line 4", "the key ['field', 'op'] is not text"
    ),
    "deep": ("name: t\ninclude: " + "[" * 2000 + "]" * 2000 + "\n", "", "nested more than 100"),
    "duplicate-key": (GOOD + "name: again\n", "line 5", "duplicate key 'name'"),
    "number-key": (HEAD + "    - {1: a, x: b}\n", "line 4", "the key 1 is not text"),
    "surrogate": ('name: "\\ud800"\n' + GOOD.split("\n", 1)[1], "",
                  "holds a character that is not text"),
}


def write(folder: Path, slug: str, content: str | bytes) -> Path:
    path = folder / f"{slug}.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize("slug", sorted(FILES))
def test_each_broken_file_is_one_clear_issue(tmp_path, catalogue: Catalogue, slug):
    content, where, words = FILES[slug]
    path = write(tmp_path, slug, content)
    with pytest.raises(SegmentValidationError) as err:
        load_segment(path, catalogue)
    [issue] = err.value.issues
    assert issue.file == str(path) and issue.path == where
    assert words in issue.message


@pytest.fixture
def library_with_broken_files(tmp_path: Path, monkeypatch, make_warehouse) -> Path:
    folder = tmp_path / "segs"
    folder.mkdir()
    for slug, (content, _, _) in FILES.items():
        write(folder, slug, content)
    write(folder, "active", GOOD)
    db = make_warehouse(tmp_path / "wh.duckdb", ROWS)
    monkeypatch.setenv("DUCKDB_PATH", str(db))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("SEGMENTS_PATH", str(folder))
    monkeypatch.setenv("CLINIC_TIMEZONE", "UTC")
    return folder


def test_validate_reports_every_broken_file_without_a_traceback(library_with_broken_files, capsys):
    assert cmd_validate([]) == 1
    out = capsys.readouterr().out
    for slug, (_, where, words) in FILES.items():
        line = next(ln for ln in out.splitlines() if f"{slug}.yaml" in ln)
        assert words in line and (where in line)
    assert "Traceback" not in out


def test_the_library_keeps_the_good_segments_and_members_still_work(
    library_with_broken_files, catalogue: Catalogue, capsys
):
    settings = Settings.from_environ(os.environ)
    library = load_library(settings, catalogue)
    assert library.get("active") is not None
    assert set(library.invalid) == set(FILES)
    materialise(
        library.get("active"), WarehouseFrames(settings.duckdb_path), catalogue,
        settings.duckdb_path, state_engine(settings.state_db_url), date(2026, 12, 1), "UTC",
    )  # fmt: skip
    # Another file's problem is no obstacle to reading this segment's members.
    assert cmd_members("active", "csv", None) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("P1,")
    # The broken segment's own problem is what asking for it says.
    assert cmd_members("impossible-date", "csv", None) == 2
    assert "'2024-02-30' is not a date" in capsys.readouterr().out


def test_a_run_fails_only_the_broken_segments(library_with_broken_files, tmp_path):
    settings = Settings.from_environ(os.environ)
    from segments.library import library_folders

    assets = build_segment_assets(library_folders(settings.segments_path))
    mine = [a for a in assets if a.key.path[-1] in {*FILES, "active"}]
    result = dg.materialize(
        mine,
        resources={
            "warehouse": WarehouseResource(duckdb_path=str(settings.duckdb_path)),
            "settings": ClinicSettingsResource(),
            "state_store": StateStoreResource(url=settings.state_db_url),
        },
        partition_key="2026-12-01",
        raise_on_error=False,
    )
    failed = {
        e.step_key: e.step_failure_data.user_failure_data.description
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    }
    assert set(failed) == {f"segments__{slug.replace('-', '_')}" for slug in FILES}
    for slug, (_, _, words) in FILES.items():
        description = failed[f"segments__{slug.replace('-', '_')}"]
        assert str(library_with_broken_files / f"{slug}.yaml") in description
        assert words in description
    assert result.asset_materializations_for_node("segments__active")


@pytest.mark.parametrize(
    ("condition", "path", "words"),
    [
        ("{field: last_visit_date, op: gt, value: '-100000 years'}", "value",
         "'-100000 years' reaches too far from the as-of date; offsets go up to 200 years"),
        ("{field: last_visit_date, op: gt, value: '+100000000 days'}", "value",
         "offsets go up to 73,050 days (200 years)"),
        ("{field: first_name, op: contains, value: '" + "x" * 1_048_576 + "'}", "value",
         "the value is 1,048,576 characters long; text values are limited to 1,000"),
        ("{field: lifetime_value, op: gt, value: .nan}", "value", "nan is not a finite number"),
        ("{field: lifetime_value, op: lt, value: .inf}", "value", "inf is not a finite number"),
        ("{field: last_visit_date, op: lt, value: 2024-03-01T09:30:00+10:00}", "value",
         "has a time of day; a date condition compares calendar days"),
        ("{field: status, op: eq, value: [active, inactive]}", "value",
         "eq compares with one value; to match any of several, use `op: in` with the list"),
        ("{field: status, op: neq, value: [active]}", "value", "use `op: not_in` with the list"),
    ],
)  # fmt: skip
def test_values_that_would_crash_or_mislead_at_evaluation_are_refused(
    tmp_path, catalogue: Catalogue, condition, path, words
):
    target = write(tmp_path, "s", HEAD + f"    - {condition}\n")
    with pytest.raises(SegmentValidationError) as err:
        load_segment(target, catalogue)
    [issue] = err.value.issues
    assert issue.path == f"include.conditions[0].{path}"
    assert words in issue.message


def test_yaml_words_that_yaml_1_1_would_turn_into_booleans_stay_text(tmp_path, catalogue):
    target = write(tmp_path, "s", HEAD + "    - {field: state, op: in, value: [NO, on, yes]}\n")
    condition = load_segment(target, catalogue).definition.include.conditions[0]
    assert condition.value == ["NO", "on", "yes"]


def test_resnapshot_of_someone_elses_private_snapshot_is_refused(
    tmp_path, monkeypatch, make_warehouse, capsys
):
    folder = tmp_path / "segs"
    folder.mkdir()
    write(
        folder,
        "sams-frozen",
        "name: frozen\nmode: snapshot\nvisibility: private\nowner: sam@clinic.example\n"
        "include:\n  conditions: [{field: status, op: eq, value: active}]\n",
    )
    db = make_warehouse(tmp_path / "wh.duckdb", ROWS)
    monkeypatch.setenv("DUCKDB_PATH", str(db))
    monkeypatch.setenv("STATE_DB_URL", f"sqlite:///{tmp_path / 'state.db'}")
    monkeypatch.setenv("SEGMENTS_PATH", str(folder))
    assert cmd_resnapshot("sams-frozen", None, "priya@clinic.example") == 1
    assert "no segment 'sams-frozen'" in capsys.readouterr().out
    assert cmd_resnapshot("sams-frozen", None, None) == 1
    capsys.readouterr()
    assert cmd_resnapshot("sams-frozen", None, "sam@clinic.example") == 0
    assert "re-frozen with 1 member(s)" in capsys.readouterr().out


def test_a_file_name_dagster_cannot_carry_fails_its_own_asset_only(tmp_path):
    from orchestration.workflow import build_workflow_defs
    from workflow.worklist_files import read_worklists

    folder = tmp_path / "segs"
    folder.mkdir()
    write(folder, "my segment", GOOD)
    write(folder, "séance", GOOD)
    write(folder, "fine", GOOD)
    assets = build_segment_assets([folder])  # builds: no invalid Dagster name raised
    keys = sorted(a.key.path[-1] for a in assets)
    assert keys[0] == "fine" and len(keys) == 3
    assert [k.split("-")[:2] for k in keys[1:]] == [["invalid", "my_segment"],
                                                  ["invalid", "s_ance"]]  # fmt: skip
    bad = [a for a in assets if a.key.path[-1] != "fine"]
    result = dg.materialize(
        bad,
        resources={"warehouse": WarehouseResource(duckdb_path=str(tmp_path / "w.duckdb")),
                   "settings": ClinicSettingsResource(),
                   "state_store": StateStoreResource(url="sqlite://")},
        partition_key="2026-12-01", raise_on_error=False,
    )  # fmt: skip
    failures = [e.step_failure_data.user_failure_data.description for e in result.all_events
                if e.event_type_value == "STEP_FAILURE"]  # fmt: skip
    assert len(failures) == 2
    assert all("is not a valid slug" in f for f in failures)
    lists = tmp_path / "wl"
    lists.mkdir()
    (lists / "bad name.yaml").write_text("segment: fine\nstages: [A, B]\n")
    found = read_worklists([folder], lists)
    defs = build_workflow_defs(found.lists.values(), found.problems)
    worklist_keys = [k.path[-1] for k in defs.resolve_asset_graph().get_all_asset_keys()
                     if k.path[0] == "worklists"]  # fmt: skip
    assert len(worklist_keys) == 1 and worklist_keys[0].startswith("invalid-bad_name-")


def test_segments_list_names_a_broken_private_file_to_its_owner_only(
    tmp_path, monkeypatch, capsys
):
    from clinic_audiences.segment_commands import cmd_segments_list

    folder = tmp_path / "segs"
    folder.mkdir()
    write(folder, "sam-secret-oncology", "name: s\nvisibility: private\nowner: sam@x\n"
          "include:\n  conditions:\n    - {field: status, op: nonsense}\n")  # fmt: skip
    write(folder, "broken-shared", "name: s\ninclude:\n  conditions:\n    - {op: eq}\n")
    write(folder, "unreadable", "name: [unclosed\n")
    monkeypatch.setenv("SEGMENTS_PATH", str(folder))
    monkeypatch.setenv("DUCKDB_PATH", str(tmp_path / "none.duckdb"))
    cmd_segments_list("bob@x")
    err = capsys.readouterr().err
    assert "sam-secret-oncology" not in err and "unreadable" not in err
    assert "broken-shared.yaml" in err
    assert "2 other definition file(s) have problems, not shown here" in err
    cmd_segments_list("sam@x")
    err = capsys.readouterr().err
    assert "sam-secret-oncology.yaml" in err and "1 other definition file(s)" in err
