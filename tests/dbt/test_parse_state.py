"""The second dbt build of a run (the analytics models, after the warehouse's) starts
from the parse state the first left for the same vars, so dbt parses only what changed;
a new day's vars are parsed in full, as dbt requires."""

import json
import os
import random
import shutil
import time

import pytest
from dagster_dbt import DbtCliResource

import orchestration.dbt as D

pytestmark = pytest.mark.dbt


def parsed(variables: str) -> tuple[int, int]:
    """(files in the project, files dbt parsed) for one `dbt parse` with `variables`,
    given the kept state and keeping the one it leaves."""
    target = D.parse_state_target("parse-test", "testrun0", variables)
    dbt = DbtCliResource(project_dir=D.dbt_project, dbt_executable=D.dbt_executable())
    dbt.cli(["parse", "--vars", variables], target_path=target).wait()
    D.keep_parse_state(target, variables)
    perf = json.loads((target / "perf_info.json").read_text())
    shutil.rmtree(target)
    return perf["path_count"], perf["parsed_path_count"]


def test_a_second_invocation_with_the_same_vars_parses_nothing_again():
    # A day no other test uses, so no state is kept for it yet.
    day = f"{random.randrange(2100, 2999)}-01-0{random.randrange(1, 9)}"
    variables = D.dbt_vars(day, "UTC")
    files, first = parsed(variables)
    assert files > 100 and first == files  # new vars: everything parsed
    assert parsed(variables) == (files, 0)


def test_only_the_newest_states_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_parse_states", lambda: tmp_path / "parse-states")
    for day in range(1, 8):
        target = tmp_path / f"invocation-{day}"
        target.mkdir()
        (target / D.PARTIAL_PARSE_FILE).write_bytes(f"state {day}".encode())
        D.keep_parse_state(target, D.dbt_vars(f"2026-01-0{day}", "UTC"))
        time.sleep(0.02)  # file times tick coarsely: one state clearly newer than the last
    kept = sorted(p.read_bytes() for p in (tmp_path / "parse-states").iterdir())
    assert kept == [f"state {day}".encode() for day in range(7 - D.PARSE_STATES_KEPT + 1, 8)]
    # An invocation that left no state (dbt failed before parsing) keeps nothing.
    empty = tmp_path / "failed"
    empty.mkdir()
    D.keep_parse_state(empty, D.dbt_vars("2026-02-01", "UTC"))
    assert len(list((tmp_path / "parse-states").iterdir())) == D.PARSE_STATES_KEPT
    # The state kept for a set of vars is given to the next invocation with them.
    target = D.parse_state_target("next", "run12345", D.dbt_vars("2026-01-07", "UTC"))
    assert (target / D.PARTIAL_PARSE_FILE).read_bytes() == b"state 7"


def test_a_state_that_cannot_be_kept_costs_a_parse_not_the_build(tmp_path, monkeypatch):
    blocked = tmp_path / "parse-states"
    blocked.write_text("a file where the folder of states would be")
    monkeypatch.setattr(D, "_parse_states", lambda: blocked)
    target = D.parse_state_target("build", "run12345", D.dbt_vars("2026-03-01", "UTC"))
    assert not (target / D.PARTIAL_PARSE_FILE).exists()
    (target / D.PARTIAL_PARSE_FILE).write_bytes(b"state")
    D.keep_parse_state(target, D.dbt_vars("2026-03-01", "UTC"))  # no error
    assert blocked.read_text() == "a file where the folder of states would be"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build-run12345-" + target.name[-8:],
                                                         "parse-states"]  # fmt: skip


def test_only_the_newest_invocation_folders_of_an_asset_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_parse_states", lambda: tmp_path / "parse-states")
    now = 1_900_000_000.0
    hour = D.INVOCATION_GRACE_SECONDS
    # Twelve finished builds of one asset, a day apart, oldest first; one other asset's
    # old build; the kept parse states.
    for n in range(12):
        folder = tmp_path / f"warehouse_dbt_assets-run{n:05d}-cafe{n:04d}"
        folder.mkdir()
        (folder / "run_results.json").write_text("{}")
        os.utime(folder, (now - (12 - n) * 24 * hour, now - (12 - n) * 24 * hour))
    other = tmp_path / "analytics_dbt_assets-run00000-beef0000"
    other.mkdir()
    os.utime(other, (now - 30 * 24 * hour, now - 30 * 24 * hour))
    (tmp_path / "parse-states").mkdir()
    removed = D.prune_invocations("warehouse_dbt_assets", now=now)
    # 12 - 8 kept = the 4 oldest go; the other asset's folder and the states stay.
    assert sorted(p.name[:26] for p in removed) == [
        f"warehouse_dbt_assets-run{n:05d}"[:26] for n in range(4)
    ]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 8 + 2
    assert "analytics_dbt_assets-run00000-beef0000" in left and "parse-states" in left


def test_a_folder_touched_in_the_last_hour_is_never_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "_parse_states", lambda: tmp_path / "parse-states")
    now = 1_900_000_000.0
    # Ten folders all touched minutes ago (ten runs at once): none is removed, though
    # only eight would be kept.
    for n in range(10):
        folder = tmp_path / f"warehouse_dbt_assets-run{n:05d}-cafe{n:04d}"
        folder.mkdir()
        os.utime(folder, (now - 60 * (10 - n), now - 60 * (10 - n)))
    assert D.prune_invocations("warehouse_dbt_assets", now=now) == []
    assert len(list(tmp_path.iterdir())) == 10
    # With no target folder at all, nothing fails.
    monkeypatch.setattr(D, "_parse_states", lambda: tmp_path / "absent" / "parse-states")
    assert D.prune_invocations("warehouse_dbt_assets", now=now) == []
