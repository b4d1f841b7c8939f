"""Invariants of the sync over arbitrary sequences of segment memberships."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from segments.workflow_block import WorkflowSpec, WorkListInfo
from workflow.api import history, list_members, sync_worklist
from workflow.planning import Member
from workflow.store import open_state

PEOPLE = [f"p{i}" for i in range(8)]
WL = WorkListInfo(slug="prop", segment_slug="prop", spec=WorkflowSpec(stages=["A", "B"]))


@settings(max_examples=40, deadline=None)
@given(runs=st.lists(st.sets(st.sampled_from(PEOPLE)), min_size=1, max_size=6))
def test_membership_after_any_sequence_of_runs(runs: list[set[str]]) -> None:
    engine = open_state("sqlite://")  # in-memory, one per example
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for n, current in enumerate(runs):
        sync_worklist(engine, WL, [Member(p, p) for p in current], now=t0 + timedelta(days=n))

    rows = {m.member_id: m for m in list_members(engine, WL)}
    ever = set().union(*runs)
    # Everyone ever in the segment has exactly one row; nobody else has one.
    assert set(rows) == ever
    # Left the segment exactly when not in the latest run.
    assert {p for p, m in rows.items() if m.left_segment} == ever - runs[-1]
    for p, m in rows.items():
        # One event per membership change, versions without gaps:
        # entered + one event for every switch between "in" and "out" after that.
        states = [p in r for r in runs]
        first = states.index(True)
        switches = sum(1 for a, b in itertools.pairwise(states[first:]) if a != b)
        events = history(engine, WL, p)
        assert [e.member_version for e in events] == list(range(1, switches + 2))
        assert m.version == switches + 1
        assert events[0].at == t0 + timedelta(days=first)
        assert m.stage == "A"
    engine.dispose()
