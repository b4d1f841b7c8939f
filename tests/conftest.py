"""Fixtures shared by every test package."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from core.state_store import connect_state

POSTGRES_ENV = "STATE_DB_TEST_POSTGRES_URL"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def state_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A fresh, empty state store: a SQLite file, or a throwaway database on the PostgreSQL
    server that CI starts (`STATE_DB_TEST_POSTGRES_URL`); that variant is skipped, with the
    reason, when no server is configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set; the PostgreSQL variant needs a server")
    name = f"state_test_{uuid.uuid4().hex[:12]}"
    admin = connect_state(base).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create database "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()
