"""State-store fixtures: every workflow test runs on SQLite and, when CI provides it, on
PostgreSQL (`STATE_DB_TEST_POSTGRES_URL`), each test in a fresh schema of its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from state import connect_state
from workflow.store import open_state

POSTGRES_ENV = "STATE_DB_TEST_POSTGRES_URL"

@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def state_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # noqa: ANN001
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set; the PostgreSQL variant needs a server")
    schema = f"wf_{uuid.uuid4().hex[:12]}"
    admin = connect_state(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'drop schema "{schema}" cascade'))
    admin.dispose()


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    eng = open_state(state_url)
    yield eng
    eng.dispose()


