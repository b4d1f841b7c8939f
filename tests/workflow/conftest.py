"""State-store fixtures: every workflow test runs on SQLite and, when CI provides it, on
PostgreSQL (`STATE_DB_TEST_POSTGRES_URL`), each test in a fresh schema of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from sqlalchemy.engine import Engine

from segments.members import ensure_membership_tables
from segments.workflow_block import WorkflowSpec, WorkListInfo
from workflow.store import open_state


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    eng = open_state(state_url)
    yield eng
    eng.dispose()


# A fixed clock: the n-th materialisation of a test happens at T0 + n days.
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _day(n: int, hours: int = 0) -> datetime:
    return T0 + timedelta(days=n, hours=hours)


FRONT_DESK = WorkflowSpec(
    stages=["To call", "Left voicemail", "Booked", "Not interested"],
    terminal=["Booked", "Not interested"],
    department="front-desk",
    default_assignee="sam@clinic.example",
    on_booking="Booked",
)


def _worklist(slug: str = "lapsed-physio", **overrides: object) -> WorkListInfo:
    fields: dict[str, object] = {"slug": slug, "segment_slug": slug, "spec": FRONT_DESK}
    fields.update(overrides)
    return WorkListInfo.model_validate(fields)


def _build_warehouse(path: Path, members: list[tuple[str, str | None]], as_of: str) -> None:
    """The two warehouse tables a work list reads, as the segment and dbt stages write them."""
    con = duckdb.connect(str(path))
    con.execute("set TimeZone = 'UTC'")
    con.execute("create schema if not exists segments")
    con.execute("create schema if not exists marts")
    con.execute(
        "create or replace table segments.membership (segment_slug varchar, patient_id varchar,"
        " case_id varchar, as_of date, entered_at timestamptz)"
    )
    # An older as_of of the same segment and another segment must both be ignored.
    con.execute(
        "insert into segments.membership values "
        "('lapsed-physio', 'old', null, '2026-01-01', '2026-01-01 00:00+00'),"
        "('other-segment', 'x9', null, ?, '2026-01-01 00:00+00')",
        [as_of],
    )
    for patient_id, case_id in members:
        con.execute(
            "insert into segments.membership values ('lapsed-physio', ?, ?, ?, now())",
            [patient_id, case_id, as_of],
        )
    ensure_membership_tables(con)
    con.execute("delete from segments.segment_runs")
    con.execute(
        "insert into segments.segment_runs select segment_slug, as_of, count(*), 0, 0, now() "
        "from segments.membership group by all"
    )
    con.execute(
        "create or replace table marts.appointments (appointment_id varchar, patient_id varchar,"
        " starts_at timestamptz, created_at timestamptz, cancelled_at timestamptz)"
    )
    con.close()


def _add_appointments(path: Path, rows: list[tuple]) -> None:
    con = duckdb.connect(str(path))
    con.executemany("insert into marts.appointments values (?, ?, ?, ?, ?)", rows)
    con.close()


# Helpers reach tests as fixtures: with --import-mode=importlib test files cannot import
# one another, and conftest is the one shared module pytest loads for them.


@pytest.fixture
def day() -> Callable[..., datetime]:
    return _day


@pytest.fixture
def worklist() -> Callable[..., WorkListInfo]:
    return _worklist


@pytest.fixture
def build_warehouse() -> Callable[..., None]:
    return _build_warehouse


@pytest.fixture
def add_appointments() -> Callable[..., None]:
    return _add_appointments
