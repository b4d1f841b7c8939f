"""Which work lists exist, and how bad work list files are reported."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from segments.workflow_block import WorkflowSpec
from workflow.worklist_files import WorkListDefinitionError, build_worklists, load_worklists


def segment(workflow: object = None, visibility: str = "shared", owner: str | None = None,
            mode: str = "dynamic", entity: str = "patient") -> SimpleNamespace:  # fmt: skip
    return SimpleNamespace(
        workflow=workflow, visibility=visibility, owner=owner, mode=mode, entity=entity
    )


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_segments_with_a_block_become_work_lists_and_others_do_not() -> None:
    spec = WorkflowSpec(stages=["To call", "Booked"])
    lists = build_worklists([
        ("lapsed", segment(spec, mode="snapshot"), None),
        ("birthdays", segment(None), None),
        ("pre-op", segment({"stages": ["Check"]}, entity="case"), None),
    ])  # fmt: skip
    assert sorted(lists) == ["lapsed", "pre-op"]
    assert (lists["lapsed"].mode, lists["lapsed"].spec.stages) == (
        "snapshot",
        ["To call", "Booked"],
    )
    assert (lists["pre-op"].entity, lists["pre-op"].segment_slug) == ("case", "pre-op")


def test_bad_block_names_the_file_and_the_path() -> None:
    with pytest.raises(WorkListDefinitionError) as err:
        build_worklists([("x", segment({"stages": ["A"], "terminal": ["B"]}), "seg/x.yaml")])
    assert str(err.value).startswith("seg/x.yaml: workflow.")
    assert "terminal[0] 'B' is not one of the stages ['A']" in str(err.value)


def test_named_work_list_over_a_private_segment_must_stay_private(tmp_path: Path) -> None:
    spec = {"stages": ["A"]}
    mine = segment(None, visibility="private", owner="lee")
    shared_over_private = write(
        tmp_path, "leak.yaml", "segment: mine\nvisibility: shared\nworkflow: {stages: [A]}\n"
    )
    with pytest.raises(WorkListDefinitionError) as err:
        build_worklists([("mine", mine, None)], [shared_over_private])
    assert str(err.value) == (
        f"{shared_over_private}: visibility: segment 'mine' is private to its owner, so a "
        "work list over it must be private to the same owner"
    )
    inherits = write(tmp_path, "ok.yaml", "segment: mine\nworkflow: {stages: [A]}\n")
    shared_over_private.unlink()
    lists = build_worklists([("mine", mine, None), ("other", segment(spec), None)], [inherits])
    assert (lists["ok"].visibility, lists["ok"].owner, lists["ok"].segment_slug) == (
        "private", "lee", "mine"
    )  # fmt: skip


def test_named_work_list_problems_are_all_reported(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "a.yaml", "segment: nope\nworkflow: {stages: [A]}\n"),
        write(tmp_path, "b.yaml", "segment: s\nworkflow: {stages: [A]}\ncolour: red\n"),
        write(tmp_path, "s.yaml", "segment: s\nworkflow: {stages: [A]}\n"),
    ]
    with pytest.raises(WorkListDefinitionError) as err:
        build_worklists([("s", segment({"stages": ["X"]}), None)], files)
    lines = str(err.value).splitlines()
    assert lines == [
        f"{files[0]}: segment: no segment named 'nope'; known segments: s",
        f"{files[1]}: colour: Extra inputs are not permitted",
        f"{files[2]}: work list slug 's' is already taken by the segment 's''s workflow; "
        "rename the file",
    ]


def test_shipped_library_loads_and_its_workflows_are_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("segments.validation", reason="the segments package provides the loader")
    monkeypatch.delenv("SEGMENTS_PATH", raising=False)
    monkeypatch.delenv("WORKLISTS_PATH", raising=False)
    lists = load_worklists()
    # The shipped lapsed-physio segment carries the front-desk workflow of docs/workflow.md.
    lapsed = lists["lapsed-physio-6-12mo"]
    assert lapsed.spec.stages == ["To call", "Left voicemail", "Booked", "Not interested"]
    assert lapsed.spec.on_booking == "Booked"


def test_an_unknown_segment_names_only_the_segments_its_owner_may_see(tmp_path: Path) -> None:
    segs = [("sam-secret-oncology", segment(None, visibility="private", owner="sam@x"), None),
            ("waitlist", segment(None), None)]  # fmt: skip
    typo = write(tmp_path, "zz.yaml", "segment: sam-secret-oncolgy\nowner: bob@x\n"
                 "workflow: {stages: [A]}\n")  # fmt: skip
    with pytest.raises(WorkListDefinitionError) as err:
        build_worklists(segs, [typo])
    assert str(err.value).endswith("known segments: waitlist")
    typo.write_text("segment: sam-secret-oncolgy\nowner: SAM@x\nvisibility: private\n"
                    "workflow: {stages: [A]}\n")  # fmt: skip
    with pytest.raises(WorkListDefinitionError) as err:
        build_worklists(segs, [typo])
    assert str(err.value).endswith("known segments: sam-secret-oncology, waitlist")
