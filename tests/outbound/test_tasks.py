"""Staff tasks: one per member a day, on the work-list card, and posted to a task system
through a signed, retried, idempotent webhook (a local receiver on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler

import pytest
import sqlalchemy as sa

from outbound.campaigns import Campaign
from outbound.channels import SendGridEmail
from outbound.run import OutboundSettings, make_plan, send_planned, task_webhook
from outbound.selection import RunClock
from outbound.tasks import tasks as tasks_table

AS_OF = date(2026, 11, 26)
CLOCK = RunClock.at(datetime(2026, 11, 26, 10, 0, tzinfo=UTC), "UTC")
SECRET = "t" * 40


def camp() -> Campaign:
    return Campaign.model_validate({
        "name": "Call about expiring referrals", "segment": "cases", "slug": "referral-calls",
        "template": {"local": "referral_expiring"}, "priority": 90, "schedule": {"every": "day"},
        "notify_patient": False,
        "tasks": {"assignee": "desk@clinic.example", "due_in_days": 2, "note": "Call them"},
    })  # fmt: skip


@pytest.fixture
def receiver(serving):
    """A task system's webhook: records what it got; answers as `script` says."""
    got: list[tuple[dict, dict]] = []
    script: dict[int, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                n = len(got)
                got.append((dict(self.headers), {"raw": body, **json.loads(body)}))
            self.send_response(script.get(n, 201))
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as url:
        yield url, got, script


def setup(make_warehouse, tmp_path, state_url, url=None) -> OutboundSettings:
    patients = [("p1", "Ann", "ann@clinic.example", None, None, None),
                ("p2", "Bob", None, None, None, None)]  # fmt: skip
    membership = [("cases", "p1", "c1", AS_OF), ("cases", "p2", "c2", AS_OF)]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership)
    return OutboundSettings(duckdb_path=str(db), state_db_url=state_url, timezone="UTC",
                            tasks_webhook_url=url, tasks_webhook_secret=SECRET if url else None,
                            web_app_url="https://app.clinic.example")  # fmt: skip


def run(settings, engine, fake_sendgrid):
    ch = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)
    return send_planned(settings, [camp()], make_plan(settings, [camp()], CLOCK, engine), CLOCK,
                        engine, ch)  # fmt: skip


def test_one_task_per_member_a_day_signed_retried_and_posted_once(
    make_warehouse, tmp_path, state_url, engine, fake_sendgrid, receiver
):
    url, got, script = receiver
    settings = setup(make_warehouse, tmp_path, state_url, url)
    report = run(settings, engine, fake_sendgrid)
    assert report.campaigns["referral-calls"].tasks == 2
    # The receiver fails the first request (a 503), then takes each task.
    script[0] = 503
    webhook = task_webhook(settings, [camp()])
    webhook.sleep = lambda s: None
    delivery = webhook.deliver(engine)
    assert (delivery.delivered, delivery.failed, delivery.waiting) == (2, 0, 0)
    assert len(got) == 3  # c1 twice (503, then 201), c2 once
    headers, body = got[1]
    assert body["task_id"] == "referral-calls:c1:2026-11-26"
    assert headers["Idempotency-Key"] == body["task_id"]
    # The signature, worked out from its definition: HMAC-SHA256 of "<timestamp>.<body>".
    stamp = headers["X-Audiences-Timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body["raw"], hashlib.sha256)
    assert headers["X-Audiences-Signature"] == f"sha256={expected.hexdigest()}"
    assert {k: body[k] for k in ("title", "patient_id", "case_id", "assignee", "due_date",
                                 "note", "card_url")} == {
        "title": "Call about expiring referrals", "patient_id": "p1", "case_id": "c1",
        "assignee": "desk@clinic.example", "due_date": "2026-11-28", "note": "Call them",
        "card_url": "https://app.clinic.example/worklists/cases/cards/c1",
    }  # fmt: skip
    # Names and addresses stay home.
    assert b"Ann" not in body["raw"] and b"@clinic.example\"" not in body["raw"].replace(
        b'"desk@clinic.example"', b"")  # fmt: skip
    # A re-run of the day makes no task twice, and posts nothing again.
    assert run(settings, engine, fake_sendgrid).campaigns["referral-calls"].tasks == 0
    assert webhook.deliver(engine).delivered == 0 and len(got) == 3
    # No patient was messaged: the campaign is tasks only.
    assert fake_sendgrid.requests == []


def test_a_receiver_that_refuses_or_stays_away(make_warehouse, tmp_path, state_url, engine,
                                               fake_sendgrid, receiver):  # fmt: skip
    url, got, script = receiver
    settings = setup(make_warehouse, tmp_path, state_url, url)
    run(settings, engine, fake_sendgrid)
    webhook = task_webhook(settings, [camp()])
    webhook.sleep = lambda s: None
    # c1 refused outright (422): failed, with the answer kept; c2 busy (503 three times):
    # waiting for a later run.
    script.update({0: 422, 1: 503, 2: 503, 3: 503})
    d = webhook.deliver(engine)
    assert (d.delivered, d.failed, d.waiting) == (0, 1, 1)
    assert "HTTP 422" in d.errors[0]
    with engine.connect() as conn:
        status = dict(conn.execute(sa.select(tasks_table.c.member_id,
                                             tasks_table.c.webhook_status)).all())  # fmt: skip
    assert status == {"c1": "failed", "c2": "pending"}
    # The next run delivers the waiting one only.
    assert webhook.deliver(engine).delivered == 1 and len(got) == 5
    # A URL without its secret is refused: tasks are never posted unsigned.
    bare = OutboundSettings(**{**settings.__dict__, "tasks_webhook_secret": None})
    with pytest.raises(ValueError, match="without TASKS_WEBHOOK_SECRET"):
        task_webhook(bare, [camp()])


def test_tasks_land_on_the_work_list_cards(make_warehouse, tmp_path, state_url, engine,
                                          fake_sendgrid):  # fmt: skip
    from core.state_store import migrate
    from orchestration.tasks import after_send
    from segments.workflow_block import WorkflowSpec, WorkListInfo
    from workflow import api, store
    from workflow.planning import Member

    migrate(engine, [store.COMPONENT])
    settings = setup(make_warehouse, tmp_path, state_url)
    info = WorkListInfo(slug="cases", segment_slug="cases", entity="case",
                        spec=WorkflowSpec(stages=["To call", "Called"]))  # fmt: skip
    # c2 is not on the list (yet): its task waits for the list to have it.
    api.sync_worklist(engine, info, [Member("c1", "p1")], now=CLOCK.real_now)
    run(settings, engine, fake_sendgrid)
    done = after_send(engine, None)
    assert (done.cards.put, done.cards.not_on_a_list) == (1, 1)
    with engine.connect() as conn:
        card = api.read_member(conn, "cases", "c1")
    assert card.assignee == "desk@clinic.example" and card.due_date == date(2026, 11, 28)
    notes = [e for e in api.history(engine, info, "c1") if e.note]
    assert any("Task referral-calls:c1:2026-11-26: Call them" in e.note for e in notes)
    # Once on the card, never again; c2 still waits.
    assert after_send(engine, None).cards.put == 0


def test_odd_ids_two_deliveries_at_once_and_a_url_that_is_not_safe(
    make_warehouse, tmp_path, state_url, engine, receiver
):
    from outbound.tasks import TaskWebhook, create_tasks, tasks_for

    url, got, _ = receiver
    c = camp()
    # A case id with characters a header cannot carry as they are.
    made = create_tasks(engine, tasks_for(c, [("p1", "病例—1/2"), ("p2", "c2")], AS_OF))
    assert len(made) == 2
    webhooks = [TaskWebhook(url, SECRET, sleep=lambda s: None) for _ in range(2)]
    results = []
    threads = [threading.Thread(target=lambda w=w: results.append(w.deliver(engine)))
               for w in webhooks]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Each task posted once, whichever run claimed it.
    assert sorted(json.loads(b["raw"])["case_id"] for _, b in got) == ["c2", "病例—1/2"]
    assert sum(r.delivered for r in results) == 2
    keys = {h["Idempotency-Key"] for h, _ in got}
    assert "referral-calls:%E7%97%85%E4%BE%8B%E2%80%941%2F2:2026-11-26" in keys
    # Plain http travels only to this machine.
    from core.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="must be https://"):
        Settings.from_environ({"TASKS_WEBHOOK_URL": "http://tasks.example/hook"})
