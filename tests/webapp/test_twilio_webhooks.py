"""Twilio's webhooks: signed replies (STOP / START / HELP) and status callbacks, each
applied once; a status never moves a message back; anything unsigned changes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace

import pytest

from tests.webapp.conftest import DAY

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BASE = "https://audiences.clinic.example"
TOKEN = "twilio-auth-token-for-tests"
INBOUND, STATUS = "/webhooks/twilio/inbound", "/webhooks/twilio/status"


@pytest.fixture
def hook(settings):
    from fastapi.testclient import TestClient

    from core.settings import TwilioAccess
    from webapp.app import create_app

    configured = replace(settings, twilio=TwilioAccess(auth_token=TOKEN), web_app_url=BASE,
                         clinic_name="Harbour Physio")  # fmt: skip
    return TestClient(create_app(configured))


def signature(url: str, fields: dict[str, str], token: str = TOKEN) -> str:
    """Twilio's scheme: HMAC-SHA1 with the auth token over the URL followed by every
    field name and value, names in alphabetical order; base64."""
    text = url + "".join(k + fields[k] for k in sorted(fields))
    return base64.b64encode(hmac.new(token.encode(), text.encode(), hashlib.sha1).digest()).decode()


def post(client, path: str, fields: dict[str, str], sign_url: str | None = None,
         token: str = TOKEN):  # fmt: skip
    sig = signature(sign_url or BASE + path, fields, token)
    return client.post(path, data=fields, headers={"X-Twilio-Signature": sig})


def patients_with_own_mobile(settings, n: int) -> list[tuple[str, str]]:
    """(patient id, E.164 number) of patients whose mobile no other record has and of
    whom nothing was learned yet."""
    import duckdb

    from outbound.phones import e164

    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        rows = con.execute(
            "select patient_id, mobile from marts.patient_features where mobile is not null "
            "and mobile in (select mobile from marts.patient_features group by 1 "
            "having count(*) = 1) order by patient_id").fetchall()  # fmt: skip
    # Nobody of whom a test of this clinic learned anything already.
    from outbound.ledger import read_learned_opt_outs, read_opt_ins
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    known = set(read_learned_opt_outs(engine)["patient_id"]) | set(read_opt_ins(engine)[
        "patient_id"])  # fmt: skip
    return [(p, e164(m, "AU")) for p, m in rows if p not in known][:n]


def learned_sms(settings) -> dict[str, str]:
    from outbound.ledger import learned_opt_outs
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    with engine.connect() as conn:
        return {r.patient_id: r.source for r in conn.execute(
            learned_opt_outs.select().where(learned_opt_outs.c.channel == "sms"))}  # fmt: skip


def refused(settings) -> set[str]:
    from outbound.run import OutboundSettings, state_engine
    from outbound.twilio_events import read_refused_addresses

    engine = state_engine(OutboundSettings.of(settings))
    return set(read_refused_addresses(engine)["recipient_key"].to_list())


def test_a_signed_stop_opts_the_number_out_once_and_start_lifts_it(hook, settings):
    (p, number), (q, other) = patients_with_own_mobile(settings, 2)
    # Written as patients do: any case, padded, a full stop.
    stop = {"MessageSid": "SM-stop-1", "From": number, "To": "+61400000000", "Body": " stop. "}
    response = post(hook, INBOUND, stop)
    assert response.status_code == 200, response.text
    assert "Harbour Physio: you will get no more text messages from us" in response.text
    assert learned_sms(settings)[p] == "twilio STOP reply"
    assert f"sms:{number}" in refused(settings)
    # The next plan: the patient is opted out of SMS.
    from outbound.run import OutboundSettings, read_opt_outs, state_engine

    o = OutboundSettings.of(settings)
    assert (p, "sms") in set(read_opt_outs(o, state_engine(o)).iter_rows())
    # Twilio retries a delivery: the same MessageSid again is applied once, answered empty.
    again = post(hook, INBOUND, stop)
    assert again.status_code == 200 and "<Message>" not in again.text
    # START (a new message) lifts it; an opt-out from another source stays.
    from outbound.ledger import record_opt_out

    record_opt_out(state_engine(o), q, "sms", "extract")
    post(hook, INBOUND, {"MessageSid": "SM-stop-2", "From": other, "Body": "STOPALL"})
    post(hook, INBOUND, {"MessageSid": "SM-start-1", "From": number, "Body": "Start"})
    post(hook, INBOUND, {"MessageSid": "SM-start-2", "From": other, "Body": "UNSTOP"})
    now = learned_sms(settings)
    assert p not in now and f"sms:{number}" not in refused(settings)
    assert now[q] == "extract"
    # A replayed STOP (its MessageSid was seen) does not opt the patient out again.
    post(hook, INBOUND, stop)
    assert p not in learned_sms(settings)


def test_help_is_answered_and_other_words_change_nothing(hook, settings):
    (_, number), = patients_with_own_mobile(settings, 3)[2:]
    before = learned_sms(settings)
    help_reply = post(hook, INBOUND, {"MessageSid": "SM-help", "From": number, "Body": "HELP"})
    assert "Reply STOP to opt out" in help_reply.text
    chat = post(hook, INBOUND, {"MessageSid": "SM-chat", "From": number,
                                "Body": "please stop by at 3"})  # fmt: skip
    assert chat.status_code == 200 and "<Message>" not in chat.text
    assert learned_sms(settings) == before


def test_an_unsigned_forged_or_misaddressed_request_is_refused_and_changes_nothing(
    hook, settings
):
    (p, number), = patients_with_own_mobile(settings, 4)[3:]
    stop = {"MessageSid": "SM-forged", "From": number, "Body": "STOP"}
    before, seen = learned_sms(settings), refused(settings)
    assert hook.post(INBOUND, data=stop).status_code == 403  # no signature
    assert post(hook, INBOUND, stop, token="another-account").status_code == 403
    assert post(hook, INBOUND, stop, sign_url="https://elsewhere.example" + INBOUND
                ).status_code == 403  # fmt: skip
    forged = {"X-Twilio-Signature": signature(BASE + INBOUND, stop)}
    tampered = hook.post(INBOUND, data={**stop, "From": "+61499999999"}, headers=forged)
    assert tampered.status_code == 403
    assert learned_sms(settings) == before and refused(settings) == seen and p not in before
    # The forged MessageSid was never recorded: the real message, signed, still counts.
    assert post(hook, INBOUND, stop).status_code == 200
    assert p in learned_sms(settings)


def test_not_configured_is_not_found(settings):
    from fastapi.testclient import TestClient

    from webapp.app import create_app

    client = TestClient(create_app(settings))
    assert client.post(INBOUND, data={"MessageSid": "x"}).status_code == 404


def ledger_row(settings, patient_id: str, sid: str, channel: str = "sms") -> str:
    from outbound.ledger import LedgerEntry, insert_pending, new_run_id, set_status
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    (row,) = insert_pending(engine, [LedgerEntry(f"{channel}-recall", patient_id, patient_id,
                                                 None, "lapsed-physio-6-12mo", channel)], DAY,
                            new_run_id())  # fmt: skip
    set_status(engine, [row], "sent", provider_message_id=sid)
    return row


def provider_status(settings, row: str) -> tuple:
    import sqlalchemy as sa

    from outbound.ledger import ledger
    from outbound.run import OutboundSettings, state_engine

    engine = state_engine(OutboundSettings.of(settings))
    with engine.connect() as conn:
        q = sa.select(ledger.c.status, ledger.c.provider_status, ledger.c.provider_error)
        r = conn.execute(q.where(ledger.c.id == row)).one()
    return tuple(r)


def test_status_callbacks_move_forward_only_in_any_order(hook, settings):
    (p, number), (q, other) = patients_with_own_mobile(settings, 7)[5:7]
    row = ledger_row(settings, p, "SM" + "a" * 32)
    def status(sid, value, **extra):  # noqa: E306
        fields = {"MessageSid": sid, "MessageStatus": value, **extra}
        return post(hook, STATUS, fields).json()["moved"]

    # Delivered arrives first, then the older sent and queued: they change nothing.
    assert status("SM" + "a" * 32, "delivered") is True
    assert status("SM" + "a" * 32, "sent") is False
    assert status("SM" + "a" * 32, "queued") is False
    assert status("SM" + "a" * 32, "delivered") is False  # a duplicate
    assert provider_status(settings, row) == ("sent", "delivered", None)
    assert status("SM" + "f" * 32, "delivered") is False  # not a message of ours
    # A failure with 21610: the number had replied STOP; it is learned as an opt-out.
    row_q = ledger_row(settings, q, "SM" + "b" * 32)
    assert status("SM" + "b" * 32, "sent") is True
    assert status("SM" + "b" * 32, "failed", ErrorCode="21610", To=other) is True
    assert provider_status(settings, row_q) == ("sent", "failed", "21610")
    assert learned_sms(settings)[q].startswith("twilio error 21610")
    assert f"sms:{other}" in refused(settings)
    # Unsigned: refused.
    assert hook.post(STATUS, data={"MessageSid": "SM" + "a" * 32,
                                   "MessageStatus": "failed"}).status_code == 403  # fmt: skip


def test_whatsapp_replies_keep_whatsapps_own_consent(hook, settings):
    from outbound.ledger import opt_ins
    from outbound.run import OutboundSettings, state_engine

    (p, number), = patients_with_own_mobile(settings, 8)[7:]
    engine = state_engine(OutboundSettings.of(settings))
    post(hook, INBOUND, {"MessageSid": "SM-wa-start", "From": f"whatsapp:{number}",
                         "Body": "YES"})  # fmt: skip
    with engine.connect() as conn:
        got = conn.execute(opt_ins.select().where(opt_ins.c.patient_id == p)).all()
    assert [(r.channel, r.source) for r in got] == [("whatsapp", "WhatsApp START reply")]
    post(hook, INBOUND, {"MessageSid": "SM-wa-stop", "From": f"whatsapp:{number}",
                         "Body": "STOP"})  # fmt: skip
    # Opted out of WhatsApp, and of WhatsApp only.
    assert p not in learned_sms(settings)
    assert f"whatsapp:{number}" in refused(settings) and f"sms:{number}" not in refused(settings)
    from outbound.ledger import read_learned_opt_outs

    assert (p, "whatsapp") in set(read_learned_opt_outs(engine, [p]).iter_rows())


@pytest.mark.parametrize(
    ("body", "kind"),
    [("STOP?", "stop"), ("'Stop'", "stop"), ("\ufeffSTOP", "stop"), ("STOP\u200b", "stop"),
     ("ＳＴＯＰ", "stop"), ("stop 🛑", "stop"), ("Opt-out", "stop"), ("  end. ", "stop"),
     ("Unstop!", "start"), ("help", "help"), ("please stop by at 3", "other"),
     ("stopp", "other"), ("", "other")],
)  # fmt: skip
def test_the_words_are_read_as_patients_type_them(body, kind):
    from outbound.twilio_events import keyword

    assert keyword(body) == kind


def test_a_large_or_repeated_form_is_refused_before_anything_is_read(hook):
    big = "x" * (65 * 1024)
    response = hook.post(INBOUND, content=f"Body={big}".encode(),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    repeated = hook.post(INBOUND, content=b"MessageSid=SM1&MessageSid=SM2&Body=STOP",
                         headers={"Content-Type": "application/x-www-form-urlencoded",
                                  "X-Twilio-Signature": "x"})  # fmt: skip
    assert repeated.status_code == 400


def test_a_whatsapp_21610_opts_out_of_whatsapp_only(hook, settings):
    from outbound.ledger import read_learned_opt_outs
    from outbound.run import OutboundSettings, state_engine

    (p, number), = patients_with_own_mobile(settings, 9)[8:]
    ledger_row(settings, p, "SM" + "c" * 32, channel="whatsapp")
    fields = {"MessageSid": "SM" + "c" * 32, "MessageStatus": "undelivered",
              "ErrorCode": "21610", "To": f"whatsapp:{number}"}  # fmt: skip
    assert post(hook, STATUS, fields).json()["moved"] is True
    engine = state_engine(OutboundSettings.of(settings))
    # Of WhatsApp, not of SMS (other tests of this clinic may have learned other things
    # of the same patient, such as an email opt-out).
    learned = set(read_learned_opt_outs(engine, [p]).iter_rows())
    assert (p, "whatsapp") in learned and (p, "sms") not in learned
    assert f"whatsapp:{number}" in refused(settings) and f"sms:{number}" not in refused(settings)
