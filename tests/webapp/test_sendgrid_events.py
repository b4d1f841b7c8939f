"""SendGrid's Event Webhook: signed batches become learned email opt-outs, each event
applied once and in the order it happened; anything unsigned changes nothing."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.webapp.conftest import DAY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
URL = "/webhooks/sendgrid/events"


@pytest.fixture(scope="module")
def key():
    """A key pair made here: SendGrid keeps the private half, the app is given the public."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode()


@pytest.fixture
def hook(settings, key):
    from fastapi.testclient import TestClient

    from webapp.app import create_app

    # One spam report of one message is a 100% complaint rate: these tests are not about
    # pausing (tests/outbound/test_consent_events.py is), so the limit is out of reach.
    with_key = replace(settings, complaint_rate=1.0,
                       sender=replace(settings.sender, webhook_public_key=key[1]))
    return TestClient(create_app(with_key))


def post(client, private, events, stamp: int | None = None, tamper: bool = False):
    body = json.dumps(events)
    stamp = str(int(time.time()) if stamp is None else stamp)
    signature = private.sign((stamp + body).encode(), ec.ECDSA(hashes.SHA256()))
    if tamper:
        body = body.replace("spamreport", "delivered")
    return client.post(URL, content=body, headers={
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp, "Content-Type": "application/json"})


def patients_with_emails(settings, n: int) -> list[tuple[str, str]]:
    """Patients with an address of their own and no email opt-out known yet."""
    import duckdb

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "select patient_id, email from marts.patient_features where email is not null "
            "and not coalesce(email_opted_out, false) and lower(trim(email)) in (select "
            "lower(trim(email)) from marts.patient_features group by 1 having count(*) = 1) "
            "order by patient_id").fetchall()  # fmt: skip
    known = opted_out(settings)
    return [r for r in rows if r[0] not in known][:n]


def opted_out(settings) -> dict[str, str]:
    from outbound.ledger import learned_opt_outs
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    with engine.connect() as conn:
        return {r.patient_id: r.source for r in conn.execute(
            learned_opt_outs.select().where(learned_opt_outs.c.channel == "email"))}


def ledger_row_for(settings, patient_id: str) -> str:
    from outbound.ledger import LedgerEntry, insert_pending, new_run_id, set_status
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    (row,) = insert_pending(engine, [LedgerEntry("lapsed-physio-reactivation", patient_id,
                                                 patient_id, None, "lapsed-physio-6-12mo",
                                                 "email")], DAY, new_run_id())  # fmt: skip
    set_status(engine, [row], "sent")
    return row


def test_a_signed_spam_report_and_bounce_become_opt_outs_applied_once(hook, key, settings):
    (p1, _), (p2, email2) = patients_with_emails(settings, 2)
    row = ledger_row_for(settings, p1)
    now = int(time.time())
    events = [
        # The spam report names the ledger row (the send's custom argument).
        {"sg_event_id": "ev-spam-1", "event": "spamreport", "ledger_id": row,
         "email": "ignored@example.net", "timestamp": now - 60},
        # The bounce carries only the address.
        {"sg_event_id": "ev-bounce-1", "event": "bounce", "email": f"  {email2.upper()} ",
         "reason": "550 mailbox unavailable", "timestamp": now - 30},
        {"sg_event_id": "ev-open-1", "event": "open", "email": email2, "timestamp": now},
        "not an event",
    ]  # fmt: skip
    response = post(hook, key[0], events)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 4, "duplicates": 0, "suppressed": 2,
                               "resubscribed": 0, "unmatched": 0, "ignored": 2, "paused": []}
    learned = opted_out(settings)
    assert learned[p1] == "sendgrid spamreport: reported as spam"
    assert learned[p2] == "sendgrid bounce: bounced: 550 mailbox unavailable"
    # SendGrid delivers at least once: the same batch again changes nothing.
    again = post(hook, key[0], events).json()
    assert again["duplicates"] == 2 and again["suppressed"] == 0
    # The next plan reads them as opt-outs of email.
    from outbound.run import OutboundSettings, read_opt_outs, state_engine

    o = OutboundSettings.of(settings)
    kept = read_opt_outs(o, state_engine(o))
    assert {(p1, "email"), (p2, "email")} <= set(kept.select("patient_id", "channel").iter_rows())


def test_an_unsigned_tampered_foreign_or_stale_batch_is_refused_and_changes_nothing(
    hook, key, settings
):
    ((p, email),) = patients_with_emails(settings, 3)[2:]
    events = [{"sg_event_id": "ev-forged", "event": "spamreport", "email": email,
               "timestamp": int(time.time())}]  # fmt: skip
    other = ec.generate_private_key(ec.SECP256R1())
    before = opted_out(settings)
    assert post(hook, other, events).status_code == 403  # another key
    assert post(hook, key[0], events, tamper=True).status_code == 403  # body changed
    assert post(hook, key[0], events, stamp=int(time.time()) - 3600).status_code == 403
    assert hook.post(URL, json=events).status_code == 403  # no signature at all
    bad = hook.post(URL, content=json.dumps(events), headers={
        "X-Twilio-Email-Event-Webhook-Signature": "not-base64!!",
        "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()))})
    assert bad.status_code == 403
    assert opted_out(settings) == before and p not in before


def test_resubscribe_lifts_only_a_group_unsubscribe_in_any_arrival_order(hook, key, settings):
    (p, email), (q, email_q) = patients_with_emails(settings, 5)[3:5]
    t = int(datetime(2026, 11, 20, 9, tzinfo=UTC).timestamp())
    # The resubscribe (later) arrives before the unsubscribe (earlier): it stays lifted.
    assert post(hook, key[0], [{"sg_event_id": "ev-re-1", "event": "group_resubscribe",
                                "email": email, "timestamp": t + 100}]).status_code == 200
    assert post(hook, key[0], [{"sg_event_id": "ev-un-1", "event": "group_unsubscribe",
                                "email": email, "timestamp": t}]).json()["suppressed"] == 0
    assert p not in opted_out(settings)
    # In order: unsubscribed, then lifted by a later resubscribe.
    post(hook, key[0], [{"sg_event_id": "ev-un-2", "event": "group_unsubscribe",
                         "email": email_q, "timestamp": t}])
    assert q in opted_out(settings)
    post(hook, key[0], [{"sg_event_id": "ev-re-2", "event": "group_resubscribe",
                         "email": email_q, "timestamp": t + 50}])
    assert q not in opted_out(settings)
    # A resubscribe never lifts a spam report.
    post(hook, key[0], [{"sg_event_id": "ev-spam-q", "event": "spamreport", "email": email_q,
                         "timestamp": t + 60}])  # fmt: skip
    post(hook, key[0], [{"sg_event_id": "ev-re-3", "event": "group_resubscribe",
                         "email": email_q, "timestamp": t + 70}])
    assert opted_out(settings)[q] == "sendgrid spamreport: reported as spam"


def test_without_a_configured_key_the_webhook_does_not_exist(client_of):
    assert client_of().post(URL, json=[]).status_code == 404


# -- one-click unsubscribe -----------------------------------------------------------------

SECRET = "u" * 40


@pytest.fixture
def unsubscribing(settings):
    from fastapi.testclient import TestClient

    from webapp.app import create_app

    with_secret = replace(settings, web_app_url="https://app.clinic.example",
                          unsubscribe_secret=SECRET)  # fmt: skip
    return TestClient(create_app(with_secret))


def test_a_one_click_post_unsubscribes_at_once_without_a_session(unsubscribing, settings):
    from core.days import today_in
    from outbound.run import OutboundSettings, read_opt_outs, state_engine
    from outbound.unsubscribe import make_token

    ((patient, email),) = patients_with_emails(settings, 1)
    token = make_token(SECRET, patient, "email", today_in(settings.clinic_timezone))
    page = unsubscribing.get(f"/unsubscribe/{token}")
    assert page.status_code == 200 and "Unsubscribe" in page.text
    # Nothing of the patient shows: no address, and no id among the words on the page.
    words = re.sub(r"<[^>]+>", " ", page.text.replace(token, "")).split()
    assert email not in page.text and patient not in words
    # What a mailbox provider sends (RFC 8058): a POST with this body, nothing else.
    done = unsubscribing.post(f"/unsubscribe/{token}", content="List-Unsubscribe=One-Click",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200 and 'id="unsubscribed"' in done.text
    assert opted_out(settings)[patient] == "one-click unsubscribe"
    o = OutboundSettings.of(settings)
    assert (patient, "email") in set(read_opt_outs(o, state_engine(o)).select(
        "patient_id", "channel").iter_rows())  # fmt: skip
    # Twice is the same as once.
    assert unsubscribing.post(f"/unsubscribe/{token}").status_code == 200


def test_an_unsubscribe_link_that_is_forged_or_expired_changes_nothing(unsubscribing, settings,
                                                                       client_of):  # fmt: skip
    from datetime import timedelta

    from core.days import today_in
    from outbound.unsubscribe import VALID_DAYS, make_token

    ((patient, _),) = patients_with_emails(settings, 1)
    old = today_in(settings.clinic_timezone) - timedelta(days=VALID_DAYS + 1)
    expired = unsubscribing.post(f"/unsubscribe/{make_token(SECRET, patient, 'email', old)}")
    assert expired.status_code == 410 and "call the clinic" in expired.text
    forged = make_token("x" * 40, patient, "email", today_in(settings.clinic_timezone))
    assert unsubscribing.post(f"/unsubscribe/{forged}").status_code == 400
    assert patient not in opted_out(settings)
    # Without a secret the address does not exist.
    assert client_of().post(f"/unsubscribe/{forged}").status_code == 404


def test_an_oversized_batch_is_refused_before_its_signature_is_checked(hook):
    from webapp.app import WEBHOOK_MAX_BYTES

    body = b"[" + b" " * WEBHOOK_MAX_BYTES + b"]"
    response = hook.post(URL, content=body, headers={
        "X-Twilio-Email-Event-Webhook-Signature": "x",
        "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()))})
    assert response.status_code == 413


def categories_of(settings, patient: str) -> dict[str, str]:
    from outbound.ledger import category_opt_outs
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    with engine.connect() as conn:
        return {r.category: r.source for r in conn.execute(
            category_opt_outs.select().where(category_opt_outs.c.patient_id == patient))}


def untouched(settings, n: int) -> tuple[str, str]:
    """The n-th patient (from 0) with an address of their own of whom nothing has been
    learned yet: no opt-out and no category left, whatever tests ran before."""
    fresh = [(p, e) for p, e in patients_with_emails(settings, 60)
             if not categories_of(settings, p)]  # fmt: skip
    return fresh[n]


def test_one_click_leaves_the_emails_category_and_the_page_chooses_the_rest(
    unsubscribing, settings
):
    from core.days import today_in
    from outbound.categories import commercial
    from outbound.unsubscribe import make_token

    patient, _ = untouched(settings, 7)
    token = make_token(SECRET, patient, "email", today_in(settings.clinic_timezone),
                       "reactivation")  # fmt: skip
    page = unsubscribing.get(f"/unsubscribe/{token}")
    assert "Stop invitations to come back from the clinic?" in page.text
    done = unsubscribing.post(f"/unsubscribe/{token}", content="List-Unsubscribe=One-Click",
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200
    # Only the category: no opt-out of email itself.
    assert categories_of(settings, patient) == {"reactivation": "one-click unsubscribe"}
    assert patient not in opted_out(settings)
    # The page now shows reactivation unticked, the rest ticked.
    boxes = re.findall(r'name="keep" value="([a-z-]+)"\s*(checked)?>', unsubscribing.get(
        f"/unsubscribe/{token}").text)  # fmt: skip
    assert dict(boxes) == {c.slug: ("" if c.slug == "reactivation" else "checked")
                           for c in commercial()}  # fmt: skip
    # Save with reactivation and birthdays ticked: reactivation comes back, every other
    # category is left.
    unsubscribing.post(f"/unsubscribe/{token}",
                       data={"action": "save", "keep": ["reactivation", "birthdays"]})  # fmt: skip
    left = categories_of(settings, patient)
    assert set(left) == {c.slug for c in commercial()} - {"reactivation", "birthdays"}
    assert set(left.values()) == {"preference page"}
    # Everything: the `all` category; appointment messages are not affected.
    unsubscribing.post(f"/unsubscribe/{token}", data={"action": "all"})
    assert categories_of(settings, patient)["all"] == "preference page"
    assert unsubscribing.post(f"/unsubscribe/{token}", data={"action": "save",
                              "keep": ["not-a-category"]}).status_code == 400  # fmt: skip
    assert unsubscribing.post(f"/unsubscribe/{token}", data={"action": "drop table"}
                              ).status_code == 400  # fmt: skip


def test_a_group_unsubscribe_of_a_categorys_group_leaves_that_category(settings, key):
    from fastapi.testclient import TestClient

    from webapp.app import create_app

    with_groups = replace(settings, sendgrid_group_ids="billing=777",
                          sender=replace(settings.sender, webhook_public_key=key[1]))  # fmt: skip
    client = TestClient(create_app(with_groups))
    patient, email = untouched(settings, 8)
    now = int(time.time())
    left = {"sg_event_id": "ev-g-1", "event": "group_unsubscribe", "email": email,
            "asm_group_id": 777, "timestamp": now - 60}
    post(client, key[0], [left])
    assert categories_of(settings, patient) == {"billing": "sendgrid group_unsubscribe"}
    assert patient not in opted_out(settings)  # email itself still allowed
    post(client, key[0], [{"sg_event_id": "ev-g-2", "event": "group_resubscribe",
                           "email": email, "asm_group_id": 777, "timestamp": now}])  # fmt: skip
    assert categories_of(settings, patient) == {}
