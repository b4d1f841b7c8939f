"""The web app in a real headless Chromium (Debian's `chromium`, driven by playwright)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.webapp.conftest import DAY, DESK, PASSWORD, PRIYA, SAM, shipped

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="no Chromium on this machine (`apt-get install chromium`; .ci/run installs it)",
)


@pytest.fixture
def server(app):
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    for _ in range(200):
        if running.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def signed_in_page(browser, server, email):
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server}/signin")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/segments")
    page.errors = errors  # type: ignore[attr-defined]
    return page


def test_the_live_count_follows_typing_and_equals_audiences_preview(browser, server, capsys):
    from clinic_audiences.cli import main

    path = shipped("lapsed-physio-6-12mo")
    assert main(["preview", str(path), "--as-of", DAY.isoformat()]) == 0
    expected = int(capsys.readouterr().out.split("members: ")[1].split()[0])
    page = signed_in_page(browser, server, DESK)
    page.click("text=Audience builder")
    page.click("text=Edit as text")
    page.fill("#definition", path.read_text())
    page.wait_for_selector("#count")
    assert int(page.inner_text("#count").replace(",", "")) == expected
    # Typing a mistake shows the problem where the CLI would, and no count.
    page.fill("#definition", path.read_text().replace("last_visit_date", "last_visit_dat"))
    page.wait_for_selector(".issues")
    assert "unknown field 'last_visit_dat'" in page.inner_text(".issues")
    assert page.errors == []  # the page's scripts ran under the content security policy


def test_a_card_dragged_to_another_stage_is_in_the_work_list_history(browser, server, capsys):
    from clinic_audiences.cli import main

    page = signed_in_page(browser, server, DESK)
    page.goto(f"{server}/worklists/lapsed-physio-6-12mo")
    source = page.locator(".column[aria-label='To call'] .card").first
    member = source.get_attribute("data-member")
    target = page.locator(".column[aria-label='Not interested'] .cards")
    source.drag_to(target)
    page.wait_for_function(
        "m => document.querySelector(`.column[aria-label='Not interested'] "
        ".card[data-member='${m}']`)?.dataset.version !== undefined && "
        "document.querySelector(`.card[data-member='${m}'] select`).value === 'Not interested'",
        arg=member,
    )
    assert main(["worklist", "history", "lapsed-physio-6-12mo", member]) == 0
    history = capsys.readouterr().out
    assert "Not interested" in history and DESK in history
    # The keyboard path: the card's own stage picker and Move button.
    card = page.locator(f".card[data-member='{member}']")
    card.locator("select[name=stage]").select_option("To call")
    card.locator("button", has_text="Move").press("Enter")
    page.wait_for_url(f"{server}/worklists/lapsed-physio-6-12mo")
    assert main(["worklist", "history", "lapsed-physio-6-12mo", member]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].count("To call") >= 1
    assert page.errors == []


def test_a_second_user_cannot_open_a_private_segment_by_url(browser, server):
    owner = signed_in_page(browser, server, PRIYA)
    owner.goto(f"{server}/segments/priyas-follow-ups")
    assert "Priya's own follow-ups" in owner.inner_text("h1")
    other = signed_in_page(browser, server, SAM)
    response = other.goto(f"{server}/segments/priyas-follow-ups")
    assert response.status == 404
    assert "priyas-follow-ups" not in other.goto(f"{server}/segments").text()


def test_explaining_a_member_and_a_non_member_found_by_name(browser, server, settings):
    import duckdb

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        (pid,) = con.sql(
            "select p.patient_id from marts.patient_features p join "
            "segments.membership m using (patient_id) where m.segment_slug = "
            "'lapsed-physio-6-12mo' order by 1 limit 1").fetchall()[0]  # fmt: skip
        outsider = con.sql("select patient_id from marts.patient_features where patient_id "
                           "not in (select patient_id from segments.membership where "
                           "segment_slug = 'lapsed-physio-6-12mo') limit 1").fetchall()[0][0]
    page = signed_in_page(browser, server, DESK)
    page.goto(f"{server}/segments/lapsed-physio-6-12mo")
    page.click("text=Why is a patient in, or not?")
    page.fill("input[name=q]", pid)
    page.click("button:has-text('Find')")
    page.wait_for_selector("#verdict")
    assert page.inner_text("#verdict").endswith(": in the segment")
    page.fill("input[name=q]", outsider)
    page.click("button:has-text('Find')")
    page.wait_for_selector("#verdict")
    assert page.inner_text("#verdict").endswith("not in the segment")
    assert page.locator(".node.fail").count() >= 1


def test_a_paused_campaign_leaves_the_plan_and_the_pipeline_honours_it(browser, server,
                                                                       capsys):  # fmt: skip
    from clinic_audiences.cli import main

    page = signed_in_page(browser, server, DESK)
    page.goto(f"{server}/campaigns")
    planned = page.locator("#plan tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.campaign)")
    assert planned, "the built day's plan is empty: the test would prove little"
    slug = planned[0]
    row = page.locator(f"#campaigns tr[data-campaign='{slug}']")
    try:
        row.locator("button", has_text="Pause").click()
        page.wait_for_url(f"{server}/campaigns")
        status = page.locator(f"#campaigns tr[data-campaign='{slug}'] .status").inner_text()
        assert f"paused by {DESK}" in status
        assert page.locator(f"#plan tr[data-campaign='{slug}']").count() == 0
        # The pipeline's own plan leaves it out too.
        main(["campaigns", "dry-run", "--as-of", DAY.isoformat()])
        assert f"\n{slug} " not in capsys.readouterr().out
    finally:
        page.goto(f"{server}/campaigns")
        resume = page.locator(f"#campaigns tr[data-campaign='{slug}'] button", has_text="Resume")
        if resume.count():
            resume.click()
            page.wait_for_url(f"{server}/campaigns")
    assert page.locator(f"#plan tr[data-campaign='{slug}']").count() > 0
    assert page.errors == []


def test_two_ticked_cards_move_at_once_and_each_keeps_its_timeline(browser, server):
    page = signed_in_page(browser, server, DESK)
    page.goto(f"{server}/worklists/lapsed-physio-6-12mo")
    cards = page.locator(".column[aria-label='To call'] .card")
    members = [cards.nth(n).get_attribute("data-member") for n in (0, 1)]
    before = int(page.inner_text(".column[aria-label='Booked'] .stage-count"))
    for n in (0, 1):
        cards.nth(n).locator("input[name=member]").check()
    assert page.inner_text("#selected-count") == "2"
    page.select_option("#bulk select[name=stage]", "Booked")
    page.click("#bulk button[value=move]")
    page.wait_for_selector("#bulk-result")
    assert page.inner_text("#bulk-result") == "2 card(s) changed."
    assert int(page.inner_text(".column[aria-label='Booked'] .stage-count")) == before + 2
    for member in members:
        assert page.locator(f".column[aria-label='Booked'] .card[data-member='{member}']").count()
    page.click(f".card[data-member='{members[0]}'] a")
    assert "moved To call → Booked" in page.inner_text("#timeline")
    assert page.errors == []


def test_a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing(browser, server):
    page = signed_in_page(browser, server, DESK)
    page.goto(f"{server}/campaigns")
    row = page.locator("#campaigns tbody tr").first
    slug = row.get_attribute("data-campaign")
    status = row.locator(".status").inner_text()
    # What a forged page would send: the same form, without the token.
    row.locator("input[name=csrf]").evaluate("input => input.remove()")
    with page.expect_response(f"{server}/campaigns/{slug}/pause") as answer:
        row.locator("button").click()
    assert answer.value.status == 403
    assert "the form has expired" in page.inner_text("body")
    page.goto(f"{server}/campaigns")
    assert page.locator(f"#campaigns tr[data-campaign='{slug}'] .status").inner_text() == status
    # A script's POST without the token is refused the same way.
    code = page.evaluate(
        "async s => (await fetch(`/campaigns/${s}/pause`, {method: 'POST', body: "
        "new URLSearchParams({paused: 'true'})})).status", slug)
    assert code == 403
