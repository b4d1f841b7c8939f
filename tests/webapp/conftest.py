"""A small clinic, built once by the real pipeline, and the web app over it."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import pytest

DAY = date(2026, 11, 20)
PASSWORD = "correct horse battery staple"
DESK, PRIYA, SAM = "desk@clinic.example", "priya@clinic.example", "sam@clinic.example"
# Signed in wrongly on purpose by the throttling test.
LOCKED = "locked@clinic.example"
PRIVATE = """\
name: Priya's own follow-ups
owner: priya@clinic.example
visibility: private
entity: patient
include:
  match: all
  conditions:
    - {field: status, op: eq, value: active}
    - {field: last_visit_date, op: gte, value: "-60 days"}
workflow:
  stages: [To call, Called]
  terminal: [Called]
"""


@pytest.fixture(scope="session")
def clinic(tmp_path_factory) -> dict[str, str]:
    """Environment of a warehouse built for DAY by `audiences run`, with a private segment
    (and work list) of Priya's, and three staff accounts."""
    from clinic_audiences.cli import main
    from extract.synthetic import generate_clinic
    from webapp import accounts

    folder = tmp_path_factory.mktemp("webapp-clinic")
    generate_clinic(400, folder / "extract", seed=11, fmt="csv", as_of=DAY)
    segments = folder / "segments"
    segments.mkdir()
    (segments / "priyas-follow-ups.yaml").write_text(PRIVATE)
    env = {
        "DUCKDB_PATH": str(folder / "w.duckdb"),
        "STATE_DB_URL": f"sqlite:///{folder / 'state.db'}",
        "CLINIC_TIMEZONE": "Australia/Sydney",
        "SEGMENTS_PATH": str(segments),
        "OUTBOUND_SEND_DISABLED": "1",
    }
    saved = {k: os.environ.get(k) for k in [*env, "DAGSTER_HOME"]}
    os.environ.update(env)
    os.environ.pop("DAGSTER_HOME", None)
    try:
        assert main(["run", "--extracts", str(folder / "extract"), "--as-of",
                     DAY.isoformat()]) == 0  # fmt: skip
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    engine = accounts.open_accounts(env["STATE_DB_URL"])
    for email, name in ((DESK, "Front Desk <b>"), (PRIYA, "Priya"), (SAM, "Sam"), (LOCKED, "L")):
        accounts.add_user(engine, email, name, "staff", PASSWORD)
    return env


@pytest.fixture
def settings(clinic, monkeypatch):
    from core.settings import Settings

    for k, v in clinic.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return Settings.from_environ(clinic)


@pytest.fixture
def app(settings):
    from webapp.app import create_app

    return create_app(settings)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html) or re.search(
        r'data-csrf="([^"]+)"', html
    )
    assert found, "no CSRF token on the page"
    return found.group(1)


def sign_in(client, email: str, password: str = PASSWORD):
    token = csrf_of(client.get("/signin").text)
    return client.post("/signin", data={"email": email, "password": password, "csrf": token},
                       follow_redirects=False)  # fmt: skip


@pytest.fixture
def client_of(app):
    from fastapi.testclient import TestClient

    def make(email: str | None = None):
        client = TestClient(app)
        if email:
            assert sign_in(client, email).status_code == 303
        return client

    return make


def shipped(slug: str) -> Path:
    return Path(__file__).resolve().parents[2] / "segments" / "definitions" / f"{slug}.yaml"
