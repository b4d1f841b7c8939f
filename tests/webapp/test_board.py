"""The board beyond one card at a time: bulk moves and assignment, the department filter,
and a card's own page with notes, due dates and its timeline."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from tests.webapp.conftest import DESK, PASSWORD, PRIYA, SAM, csrf_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
LIST = "lapsed-physio-6-12mo"


def picks(html: str) -> list[str]:
    """The cards' checkbox values on a board: `version:member_id`."""
    return re.findall(r'name="member" value="([^"]+)" form="bulk"', html)


def stage_of(client, member_id: str) -> str:
    html = client.get(f"/worklists/{LIST}/cards/{member_id}").text
    return re.search(r'<dd id="stage">([^(]+) \(', html).group(1).strip()


def test_a_bulk_move_changes_each_card_once_and_skips_what_changed_since(client_of, capsys):
    from clinic_audiences.cli import main

    desk = client_of(DESK)
    html = desk.get(f"/worklists/{LIST}").text
    chosen = picks(html)[:2]
    assert len(chosen) == 2
    form = {"csrf": csrf_of(html), "action": "move", "stage": "Left voicemail",
            "member": chosen, "back": "show=all"}  # fmt: skip
    response = desk.post(f"/worklists/{LIST}/bulk", data=form, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/worklists/{LIST}?done=2&skipped=0&missing=0&show=all"
    for value in chosen:
        member = value.split(":", 1)[1]
        assert stage_of(desk, member) == "Left voicemail"
        capsys.readouterr()
        assert main(["worklist", "history", LIST, member]) == 0
        assert "Left voicemail" in capsys.readouterr().out
    # The same selection again carries the versions the cards had: both are left alone.
    again = desk.post(f"/worklists/{LIST}/bulk", data=form | {"stage": "Booked"})
    assert "0 card(s) changed; 2 left as they were" in again.text
    assert all(stage_of(desk, v.split(":", 1)[1]) == "Left voicemail" for v in chosen)


def test_bulk_assignment_only_to_someone_who_can_see_the_list(client_of):
    desk, priya = client_of(DESK), client_of(PRIYA)
    html = desk.get(f"/worklists/{LIST}").text
    one = picks(html)[-1]
    ok = desk.post(f"/worklists/{LIST}/bulk", data={"csrf": csrf_of(html), "action": "assign",
                                                     "assignee": PRIYA, "member": [one]})
    assert "1 card(s) changed" in ok.text
    assert "Assigned to</dt><dd id=\"assignee\">priya@clinic.example" in desk.get(
        f"/worklists/{LIST}/cards/{one.split(':', 1)[1]}").text  # fmt: skip
    nobody = desk.post(f"/worklists/{LIST}/bulk", data={
        "csrf": csrf_of(html), "action": "assign", "assignee": "stranger@else.example",
        "member": [one]})  # fmt: skip
    assert nobody.status_code == 400
    # Priya's private list: Sam cannot be given its cards, and never sees it.
    board = priya.get("/worklists/priyas-follow-ups").text
    mine = picks(board)[:1]
    assert mine
    refused = priya.post("/worklists/priyas-follow-ups/bulk", data={
        "csrf": csrf_of(board), "action": "assign", "assignee": SAM, "member": mine})
    assert refused.status_code == 400
    assert SAM not in board.split('name="assignee"')[1].split("</select>")[0]
    sam = client_of(SAM)
    member = mine[0].split(":", 1)[1]
    assert sam.get(f"/worklists/priyas-follow-ups/cards/{member}").status_code == 404
    token = csrf_of(sam.get("/segments").text)
    assert sam.post("/worklists/priyas-follow-ups/bulk", data={
        "csrf": token, "action": "move", "stage": "Called", "member": mine}).status_code == 404


def test_the_department_filter_shows_cards_assigned_within_a_department(client_of, settings):
    from webapp import accounts

    engine = accounts.open_accounts(settings.state_db_url)
    accounts.add_user(engine, "billing.one@clinic.example", "Bill", "staff", PASSWORD,
                      department="billing")  # fmt: skip
    desk = client_of(DESK)
    html = desk.get(f"/worklists/{LIST}").text
    one = picks(html)[0]
    assert "1 card(s) changed" in desk.post(f"/worklists/{LIST}/bulk", data={
        "csrf": csrf_of(html), "action": "assign", "assignee": "billing.one@clinic.example",
        "member": [one]}).text  # fmt: skip
    filtered = desk.get(f"/worklists/{LIST}?department=billing").text
    assert picks(filtered) == [f"{int(one.split(':')[0]) + 1}:{one.split(':', 1)[1]}"]
    assert '<option selected>billing</option>' in filtered


def version_on(client, url: str) -> str:
    return re.search(r'name="version" value="(\d+)"', client.get(url).text).group(1)


def test_a_card_page_keeps_notes_due_dates_and_every_change_in_its_timeline(client_of):
    from core.days import today_in

    desk = client_of(DESK)
    html = desk.get(f"/worklists/{LIST}").text
    member = picks(html)[1].split(":", 1)[1]
    url = f"/worklists/{LIST}/cards/{member}"
    token = csrf_of(desk.get(url).text)

    def change(**form):
        return desk.post(url, data={"csrf": token, "version": version_on(desk, url), **form})

    note = "Called twice <script>alert(1)</script>; try after 5pm"
    assert change(action="note", note=note).status_code == 200
    yesterday = today_in("Australia/Sydney") - timedelta(days=1)
    change(action="due", due=yesterday.isoformat())
    page = desk.get(url).text
    timeline = page.split('id="timeline"')[1]
    assert "Called twice &lt;script&gt;alert(1)&lt;/script&gt;; try after 5pm" in timeline
    assert f"due {yesterday.isoformat()}" in timeline and "<script>alert" not in page
    assert timeline.index("due ") < timeline.index("Called twice")  # newest first
    assert f'<dd id="due">{yesterday.isoformat()}</dd>' in page
    # Overdue now: it shows under the overdue filter, marked.
    overdue = desk.get(f"/worklists/{LIST}?show=overdue").text
    assert member in "".join(picks(overdue)) and "card overdue" in overdue
    for bad, says in (({"action": "note", "note": "  "}, "a note needs some text"),
                      ({"action": "due", "due": "31/12/2026"}, "is not a due date"),
                      ({"action": "due", "due": "0001-01-01"}, "is not a due date"),
                      ({"action": "due", "due": "20261130"}, "is not a due date"),
                      ({"action": "note", "note": "x" * 2001}, "at most 2,000"),
                      ({"action": "note", "note": "a\x1b[8mb"}, "control characters"),
                      ({"action": "rename"}, "unknown change")):  # fmt: skip
        response = change(**bad)
        assert response.status_code == 400 and says in response.text, bad
        assert "invalid literal" not in response.text and "isoformat" not in response.text
    assert desk.get(f"/worklists/{LIST}/cards/no-such-member").status_code == 404
    assert desk.post(url, data={"action": "note", "note": "no token"}).status_code == 403
    # A due date set from a card page opened before a colleague's change is refused.
    stale = version_on(desk, url)
    change(action="note", note="a colleague's note")
    refused = desk.post(url, data={"csrf": token, "version": stale, "action": "due", "due": ""})
    assert refused.status_code == 409
    assert change(action="due", due="").status_code == 200
    assert "due date cleared" in desk.get(url).text.split('id="timeline"')[1]


def test_the_campaigns_page_counts_the_ledger_per_day_and_status(client_of, settings):
    from core.days import today_in
    from outbound.ledger import LedgerEntry, insert_pending, new_run_id, set_status
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    today = today_in(settings.clinic_timezone)
    old = today - timedelta(days=40)  # beyond the page's 30 days
    rows = {"sent": 3, "failed": 1, "unknown": 2}
    for day in (today - timedelta(days=1), old):
        entries = [LedgerEntry("invoice-chasing", f"ledger-test-{day}-{n}", None, None,
                               "invoices-outstanding-30d", "email")
                   for n in range(sum(rows.values()))]  # fmt: skip
        ids = insert_pending(engine, entries, day, new_run_id())
        start = 0
        for status, n in rows.items():
            set_status(engine, ids[start:start + n], status)
            start += n
    page = client_of(DESK).get("/campaigns").text
    table = page.split('id="ledger"')[1].split("</table>")[0]
    day = (today - timedelta(days=1)).isoformat()
    row = table.split(f'data-campaign="invoice-chasing" data-day="{day}"')[1].split("</tr>")[0]
    cells = re.findall(r'<td class="num (\w+)">(\d+)</td>', row)
    assert cells == [("sent", "3"), ("failed", "1"), ("unknown", "2"), ("pending", "0"),
                     ("other", "0")]
    assert old.isoformat() not in table


def test_the_member_table_sorts_by_a_heading_both_ways(client_of):
    desk = client_of(DESK)
    ids = []
    for desc in ("false", "true"):
        html = desk.get(f"/segments/{LIST}?sort=last_visit&desc={desc}").text
        body = html.split("<tbody>")[1].split("</tbody>")[0]
        visits = [d for d in re.findall(r"<td>(\d{4}-\d{2}-\d{2})</td></tr>", body)]
        assert len(visits) >= 5
        assert visits == sorted(visits, reverse=desc == "true")
        ids.append(re.findall(r"<tr><td>(\d+)", body))
    assert ids[0] == ids[1][::-1]  # every member has a last visit here: exactly reversed
    # An unknown column is the default order, not an error.
    assert desk.get(f"/segments/{LIST}?sort=password_hash").status_code == 200


# -- what a hostile pass found, kept -------------------------------------------------------


def test_a_bulk_change_with_one_bad_value_changes_nothing(client_of):
    desk = client_of(DESK)
    html = desk.get(f"/worklists/{LIST}").text
    good = picks(html)[0]
    before = stage_of(desk, good.split(":", 1)[1])
    for bad in ("abc:" + good.split(":", 1)[1], "0_1:" + good.split(":", 1)[1], "no-colon",
                "1:"):  # fmt: skip
        response = desk.post(f"/worklists/{LIST}/bulk", data={
            "csrf": csrf_of(html), "action": "move", "stage": "Booked", "member": [good, bad]})
        assert response.status_code == 400, bad
        assert "invalid literal" not in response.text
    # The good card is where it was, at the version it was shown at.
    assert stage_of(desk, good.split(":", 1)[1]) == before
    assert good in picks(desk.get(f"/worklists/{LIST}").text)


def test_a_bulk_change_counts_cards_gone_apart_and_keeps_only_the_boards_filters(client_of):
    desk = client_of(DESK)
    html = desk.get(f"/worklists/{LIST}").text
    one = picks(html)[2]
    response = desk.post(f"/worklists/{LIST}/bulk", follow_redirects=False, data={
        "csrf": csrf_of(html), "action": "assign", "assignee": "", "member": [
            one, "1:nobody-here"], "back": "show=all&done=999&evil=1"})  # fmt: skip
    location = response.headers["location"]
    assert location == f"/worklists/{LIST}?done=1&skipped=0&missing=1&show=all"
    assert "1 no longer on this list" in desk.get(location).text


def test_a_board_can_tick_more_than_a_thousand_cards_but_not_without_bound(client_of):
    desk = client_of(DESK)
    token = csrf_of(desk.get(f"/worklists/{LIST}").text)
    many = [f"1:nobody-{n}" for n in range(1_250)]  # five full stages' worth
    response = desk.post(f"/worklists/{LIST}/bulk", data={
        "csrf": token, "action": "assign", "assignee": "", "member": many})
    assert response.status_code == 200 and "1250 no longer on this list" in response.text
    response = desk.post(f"/worklists/{LIST}/bulk", data={
        "csrf": token, "action": "assign", "assignee": "", "member": many * 2})
    assert response.status_code == 400 and "at most 2,000" in response.text


def test_nul_bytes_are_refused_before_any_database_sees_them(client_of):
    from tests.webapp.conftest import sign_in

    desk = client_of(DESK)
    token = csrf_of(desk.get(f"/worklists/{LIST}").text)
    assert desk.get(f"/worklists/{LIST}/cards/a%00b").status_code == 404
    assert desk.get("/worklists/x%00y").status_code == 404
    for form in ({"action": "note", "note": "nul \x00 here", "version": "1"},):
        response = desk.post(f"/worklists/{LIST}/cards/x", data={"csrf": token, **form})
        assert response.status_code == 400
    anonymous = client_of()
    signin_token = csrf_of(anonymous.get("/signin").text)
    response = anonymous.post("/signin", data={"email": "a\x00@x", "password": "p",
                                               "csrf": signin_token})
    assert response.status_code == 400
    assert sign_in(client_of(), DESK).status_code == 303  # sign-in itself still works


def test_the_campaigns_page_title_is_its_title_and_the_ledger_shows_every_status(
    client_of, settings
):
    from core.days import today_in
    from outbound.ledger import LedgerEntry, insert_pending, new_run_id, set_status
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    today = today_in(settings.clinic_timezone)
    for day, status in ((today - timedelta(days=2), "sandbox"),
                        (today + timedelta(days=400), "sent")):  # fmt: skip
        ids = insert_pending(engine, [LedgerEntry("birthday-greetings", f"other-{day}", None,
                                                  None, "birthdays-next-7-days", "email")],
                             day, new_run_id())  # fmt: skip
        set_status(engine, ids, status)
    page = client_of(DESK).get("/campaigns").text
    assert "<title>Campaigns · clinic-audiences</title>" in page
    assert page.count('id="ledger"') == 1
    table = page.split('id="ledger"')[1].split("</table>")[0]
    row = table.split(f'data-day="{today - timedelta(days=2)}"')[1].split("</tr>")[0]
    assert '<td class="num other">1</td>' in row
    assert str(today + timedelta(days=400)) not in table


def test_the_cli_neither_fakes_history_rows_nor_assigns_to_a_disabled_account(
    client_of, settings, capsys
):
    from clinic_audiences.cli import main
    from webapp import accounts

    desk = client_of(DESK)
    member = picks(desk.get(f"/worklists/{LIST}").text)[3].split(":", 1)[1]
    fake = "called\n3  2026-12-02 02:09  priya@clinic.example  moved  To call  Booked  -\x1b[8m"
    assert main(["worklist", "note", LIST, member, fake, "--by", DESK]) == 0
    capsys.readouterr()
    assert main(["worklist", "history", LIST, member]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[8m" in out and "called\\n3  2026" in out
    assert not any(line.startswith("3  2026-12-02 02:09") for line in out.splitlines())
    engine = accounts.open_accounts(settings.state_db_url)
    accounts.add_user(engine, "gone@clinic.example", "Gone", "staff", PASSWORD)
    accounts.disable_user(engine, "gone@clinic.example")
    assert main(["worklist", "assign", LIST, member, "gone@clinic.example", "--by", DESK]) == 1
    assert "not an active account" in capsys.readouterr().err
    assert main(["worklist", "assign", LIST, member, PRIYA, "--by", DESK]) == 0


def test_the_state_store_never_puts_written_values_in_an_error(tmp_path):
    import sqlalchemy as sa

    from core.state_store import connect_state

    engine = connect_state(f"sqlite:///{tmp_path / 's.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("create table t (id text primary key)"))
        conn.execute(sa.text("insert into t values (:v)"), {"v": "patient note 0412 555 019"})
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("insert into t values (:v)"), {"v": "patient note 0412 555 019"})
    except sa.exc.IntegrityError as err:
        assert "0412" not in str(err)
    else:
        raise AssertionError("the duplicate was accepted")


def test_a_card_shows_the_consent_learned_from_every_source(client_of, settings):
    from datetime import UTC, datetime

    from outbound import ledger as L
    from outbound.run import OutboundSettings, state_engine
    from outbound.twilio_events import STOP_SOURCE, refuse_number

    desk = client_of(DESK)
    member = picks(desk.get(f"/worklists/{LIST}").text)[2].split(":", 1)[1]
    url = f"/worklists/{LIST}/cards/{member}"
    # (Other tests of this clinic may have learned something of the same patient before.)
    engine = state_engine(OutboundSettings.of(settings))
    with engine.begin() as conn:
        refuse_number(conn, None, [member], STOP_SOURCE, datetime(2026, 11, 20, tzinfo=UTC))
        L.record_category_opt_outs(conn, [member], "birthdays", "preference page",
                                   datetime(2026, 11, 21, tzinfo=UTC))  # fmt: skip
        L.record_opt_ins(conn, [member], "whatsapp", "WhatsApp START reply",
                         datetime(2026, 11, 22, tzinfo=UTC))  # fmt: skip
    shown = re.search(r'<dd id="consent">(.*?)</dd>', desk.get(url).text, re.S).group(1)
    assert ("opted out of sms 2026-11-20 (twilio STOP reply); left category birthdays "
            "2026-11-21 (preference page); opted in to whatsapp 2026-11-22 (WhatsApp START "
            "reply)") in shown  # oldest first  # fmt: skip
