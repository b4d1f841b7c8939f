"""Saving from the audience builder: the YAML the pipeline reads, versions with who and
when, and nobody overwriting what they may not change or what changed under them."""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import replace

import pytest
import yaml

from tests.webapp.conftest import DESK, PASSWORD, SAM, csrf_of, shipped

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DEFINITION = {
    "name": "Active with a balance",
    "description": "Active patients who owe the clinic money.",
    "visibility": "shared",
    "include": {"match": "all", "conditions": [
        {"field": "status", "op": "eq", "value": "active"},
        {"field": "balance_due", "op": "gt", "value": 0}]},
}  # fmt: skip


def save(client, slug: str, definition: dict, base: str = "", token: str | None = None):
    token = token or csrf_of(client.get("/builder").text)
    return client.post("/builder/save", data={
        "csrf": token, "slug": slug, "base": base, "definition": json.dumps(definition)})


def base_of(client, slug: str) -> str:
    html = client.get(f"/builder?start={slug}").text
    return html.split('id="base" name="base" value="')[1].split('"')[0]


@pytest.fixture
def folder(settings):
    """The saved-segments folder, with what a test saved removed afterwards."""
    before = set(settings.segments_path.iterdir())
    yield settings.segments_path
    for path in set(settings.segments_path.iterdir()) - before:
        path.unlink()


def test_a_new_segment_is_saved_as_the_yaml_the_pipeline_reads_with_its_versions(
    client_of, folder, capsys
):
    from clinic_audiences.cli import main

    desk = client_of(DESK)
    response = save(desk, "active-with-balance", DEFINITION | {"owner": "someone@else.example"})
    assert response.status_code == 200, response.text
    assert "Saved" in response.text and "version 1" in response.text
    saved = yaml.safe_load((folder / "active-with-balance.yaml").read_text())
    # The owner is who saved it, whatever the draft said.
    assert saved == DEFINITION | {"owner": DESK}
    assert main(["validate", str(folder / "active-with-balance.yaml")]) == 0
    # A second save from the version just saved is version 2, with what it changed.
    changed = copy.deepcopy(DEFINITION) | {"description": "Owes more than 100."}
    changed["include"]["conditions"][1] = {"field": "balance_due", "op": "gt", "value": 100}
    assert save(desk, "active-with-balance", changed, base_of(desk, "active-with-balance")
                ).status_code == 200  # fmt: skip
    page = desk.get("/segments/active-with-balance/versions").text
    assert "Version 2 · desk@clinic.example" in page and "Version 1 · desk@clinic.example" in page
    assert "-  - {field: balance_due, op: gt, value: 0}" in page
    assert "+  - {field: balance_due, op: gt, value: 100}" in page
    capsys.readouterr()
    assert main(["segments", "list"]) == 0
    assert "active-with-balance" in capsys.readouterr().out


def test_a_save_from_an_older_version_is_refused_and_says_who_saved_since(client_of, folder):
    desk, other_tab = client_of(DESK), client_of(DESK)
    assert save(desk, "balance-race", DEFINITION).status_code == 200
    # Both open version 1; one saves first; the other's save would overwrite it.
    base = base_of(desk, "balance-race")
    assert save(desk, "balance-race", DEFINITION | {"name": "Desk's"}, base).status_code == 200
    response = save(other_tab, "balance-race", DEFINITION | {"name": "Sam's"}, base)
    assert response.status_code == 409
    assert f"was changed by {DESK}" in response.text and "reload it" in response.text
    assert yaml.safe_load((folder / "balance-race.yaml").read_text())["name"] == "Desk's"


def test_two_saves_at_once_from_the_same_version_one_wins_one_is_told(client_of, folder):
    desk = client_of(DESK)
    assert save(desk, "balance-at-once", DEFINITION).status_code == 200
    base = base_of(desk, "balance-at-once")
    clients = [client_of(DESK), client_of(DESK)]
    tokens = [csrf_of(c.get("/builder").text) for c in clients]
    codes: list[int] = []
    threads = [threading.Thread(target=lambda c=c, t=t, n=n: codes.append(save(
        c, "balance-at-once", DEFINITION | {"name": f"writer {n}"}, base, t).status_code))
        for n, (c, t) in enumerate(zip(clients, tokens, strict=True))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409]
    versions = desk.get("/segments/balance-at-once/versions").text
    assert "Version 2" in versions and "Version 3" not in versions


def test_a_file_changed_by_hand_is_kept_as_a_version_and_not_overwritten(client_of, folder):
    desk = client_of(DESK)
    assert save(desk, "balance-by-hand", DEFINITION).status_code == 200
    base = base_of(desk, "balance-by-hand")
    path = folder / "balance-by-hand.yaml"
    path.write_text(path.read_text().replace("value: 0", "value: 50"))
    assert save(desk, "balance-by-hand", DEFINITION, base).status_code == 409
    assert "value: 50" in path.read_text()
    assert save(desk, "balance-by-hand", DEFINITION, base_of(desk, "balance-by-hand")
                ).status_code == 200  # fmt: skip
    versions = desk.get("/segments/balance-by-hand/versions").text
    assert "Version 2 · changed outside the app" in versions
    assert "Version 3 · desk@clinic.example" in versions


def test_who_may_save_over_what(client_of, folder, settings):
    from webapp import accounts

    desk, sam = client_of(DESK), client_of(SAM)
    # A shipped segment is read only: saved under a new name instead.
    response = save(desk, "lapsed-physio-6-12mo", yaml.safe_load(
        shipped("lapsed-physio-6-12mo").read_text()), base="x")  # fmt: skip
    assert response.status_code == 409 and "save it under a new name" in response.text
    # Someone else's shared segment: only its owner or an admin.
    assert save(desk, "desks-shared", DEFINITION).status_code == 200
    response = save(sam, "desks-shared", DEFINITION | {"name": "mine now"},
                    base_of(sam, "desks-shared"))  # fmt: skip
    assert response.status_code == 409 and f"only its owner ({DESK})" in response.text
    accounts.add_user(accounts.open_accounts(settings.state_db_url), "boss@clinic.example",
                      "Boss", "admin", PASSWORD)  # fmt: skip
    boss = client_of("boss@clinic.example")
    assert save(boss, "desks-shared", DEFINITION | {"name": "by the admin"},
                base_of(boss, "desks-shared")).status_code == 200  # fmt: skip
    # The admin's change keeps the segment's owner.
    assert yaml.safe_load((folder / "desks-shared.yaml").read_text())["owner"] == DESK
    # Someone else's private segment: its name is taken, its content stays unseen.
    private = folder / "priyas-follow-ups.yaml"
    before = private.read_text()
    response = save(sam, "priyas-follow-ups", DEFINITION)
    assert response.status_code == 409 and "exists already" in response.text
    assert "last_visit_date" not in response.text and private.read_text() == before
    assert sam.get("/builder?start=priyas-follow-ups").status_code == 404
    assert sam.get("/segments/priyas-follow-ups/versions").status_code == 404
    token = csrf_of(sam.get("/builder").text)
    response = sam.post("/builder/preview", data={"csrf": token, "saved": "priyas-follow-ups",
                                                   "definition": json.dumps(DEFINITION)})
    assert response.status_code == 404


def test_bad_names_and_bad_definitions_write_nothing(client_of, folder):
    desk = client_of(DESK)
    files = set(folder.glob("*.yaml"))
    for slug in ("../escape", "Upper", "", "a/b", ".hidden"):
        response = save(desk, slug, DEFINITION)
        assert response.status_code == 422 and "not a valid slug" in response.text, slug
    broken = DEFINITION | {"include": {"conditions": [{"field": "balanse_due", "op": "gt",
                                                       "value": 0}]}}  # fmt: skip
    response = save(desk, "broken", broken)
    assert response.status_code == 422
    assert 'data-issue-path="include.conditions[0].field"' in response.text
    assert "unknown field &#39;balanse_due&#39; (did you mean balance_due" in response.text
    response = desk.post("/builder/save", data={"slug": "no-token",
                                                "definition": json.dumps(DEFINITION)})
    assert response.status_code == 403
    html = DEFINITION | {"name": "<script>alert(1)</script>"}
    assert save(desk, "html-name", html).status_code == 200
    assert "<script>alert(1)" not in desk.get("/segments/html-name/versions").text
    assert set(folder.glob("*.yaml")) - files == {folder / "html-name.yaml"}


def test_without_a_saved_segments_folder_the_builder_says_how_to_get_one(settings):
    from fastapi.testclient import TestClient

    from tests.webapp.conftest import sign_in
    from webapp.app import create_app

    client = TestClient(create_app(replace(settings, segments_path=None)))
    assert sign_in(client, DESK).status_code == 303
    response = save(client, "anything", DEFINITION)
    assert response.status_code == 409 and "set SEGMENTS_PATH" in response.text
