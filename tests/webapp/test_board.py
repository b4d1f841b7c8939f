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
    assert response.headers["location"] == f"/worklists/{LIST}?done=2&skipped=0&show=all"
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


def test_a_card_page_keeps_notes_due_dates_and_every_change_in_its_timeline(client_of):
    from core.days import today_in

    desk = client_of(DESK)
    html = desk.get(f"/worklists/{LIST}").text
    member = picks(html)[1].split(":", 1)[1]
    url = f"/worklists/{LIST}/cards/{member}"
    token = csrf_of(desk.get(url).text)
    note = "Called twice <script>alert(1)</script>; try after 5pm"
    assert desk.post(url, data={"csrf": token, "action": "note", "note": note}).status_code == 200
    yesterday = today_in("Australia/Sydney") - timedelta(days=1)
    desk.post(url, data={"csrf": token, "action": "due", "due": yesterday.isoformat()})
    page = desk.get(url).text
    timeline = page.split('id="timeline"')[1]
    assert "Called twice &lt;script&gt;alert(1)&lt;/script&gt;; try after 5pm" in timeline
    assert f"due {yesterday.isoformat()}" in timeline and "<script>alert" not in page
    assert timeline.index("due ") < timeline.index("Called twice")  # newest first
    assert f'<dd id="due">{yesterday.isoformat()}</dd>' in page
    # Overdue now: it shows under the overdue filter, marked.
    overdue = desk.get(f"/worklists/{LIST}?show=overdue").text
    assert member in "".join(picks(overdue)) and "card overdue" in overdue
    for bad in ({"action": "note", "note": "  "}, {"action": "due", "due": "31/12/2026"},
                {"action": "rename"}):  # fmt: skip
        assert desk.post(url, data={"csrf": token, **bad}).status_code == 400, bad
    assert desk.get(f"/worklists/{LIST}/cards/no-such-member").status_code == 404
    assert desk.post(url, data={"action": "note", "note": "no token"}).status_code == 403


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
    assert cells == [("sent", "3"), ("failed", "1"), ("unknown", "2"), ("pending", "0")]
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
