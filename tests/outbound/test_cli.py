"""`audiences campaigns list | dry-run | send` through the plain CLI functions."""

from __future__ import annotations

import csv
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from clinic_audiences import campaign_commands as cli
from core.state_store import connect_state
from outbound import ledger as L

AS_OF = "2026-11-26"  # Thursday
# Only the clinic's real today is ever sent: the sending tests plan for it.
TODAY = datetime.now(ZoneInfo("Australia/Sydney")).date().isoformat()

CAMPAIGN = """
name: Reactivation
segment: lapsed-physio-6-12mo
template: {local: reactivation}
priority: 50
schedule: {every: day}
send_window: {start: "09:00", end: "17:00"}
"""
BILLING = """
name: Billing
segment: invoices-outstanding-30d
template: {local: invoice_reminder}
priority: 80
schedule: {every: week, days: [thu]}
enabled: true
"""
PAUSED = BILLING.replace("enabled: true", "enabled: false").replace("[thu]", "[mon, wed]")


@pytest.fixture(params=[AS_OF])
def env(request, tmp_path, monkeypatch, make_warehouse):
    patients = [
        ("p1", "Ann", "ann@clinic.example", None, None, None),
        ("p2", "Bob", "bob@clinic.example", None, None, None),
        ("p3", "Cy", None, None, None, None),
        ("p4", "Di", "di@clinic.example", None, False, None),
    ]
    day = date.fromisoformat(request.param)
    membership = [("lapsed-physio-6-12mo", p, None, day) for p in ("p1", "p2", "p3", "p4")] + [
        ("invoices-outstanding-30d", "p2", None, day)
    ]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "reactivation.yaml").write_text(CAMPAIGN)
    weekday = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()]
    (campaigns / "billing.yaml").write_text(BILLING.replace("[thu]", f"[{weekday}]"))
    (campaigns / "billing-paused.yaml").write_text(PAUSED)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("DUCKDB_PATH", str(db))
    monkeypatch.setenv("STATE_DB_URL", state)
    monkeypatch.setenv("CLINIC_TIMEZONE", "Australia/Sydney")
    monkeypatch.setenv("CAMPAIGNS_PATH", str(campaigns))
    monkeypatch.setenv("OUTBOUND_RUN_TIME", "10:00")
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    monkeypatch.delenv("SEGMENTS_PATH", raising=False)
    return tmp_path, state


def test_list(env, capsys):
    assert cli.cmd_list() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["campaign", "segment", "priority", "enabled", "schedule"]
    assert out[1].split() == ["billing", "invoices-outstanding-30d", "80", "play", "weekly", "thu"]
    assert out[2].split() == [
        "billing-paused",
        "invoices-outstanding-30d",
        "80",
        "paused",
        "weekly",
        "mon,wed",
    ]
    assert out[3].split() == ["reactivation", "lapsed-physio-6-12mo", "50", "play", "daily"]


def test_dry_run_prints_counts_and_writes_the_csv(env, capsys):
    tmp_path, _ = env
    out_csv = tmp_path / "plan.csv"
    assert cli.cmd_dry_run(AS_OF, str(out_csv)) == 0
    text = capsys.readouterr().out
    assert "send plan for 2026-11-26 at 2026-11-26T10:00+11:00" in text
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["campaign", "patient_id", "channel", "decision", "reason",
                             "encoding", "segments"]  # fmt: skip
    got = {(r["campaign"], r["patient_id"]): (r["decision"], r["reason"]) for r in rows}
    # billing (80) claims p2 over reactivation (50); p3 has no email; p4 said no to email.
    assert got == {
        ("billing", "p2"): ("send", ""),
        ("reactivation", "p1"): ("send", ""),
        ("reactivation", "p2"): ("suppressed", "lower_priority"),
        ("reactivation", "p3"): ("suppressed", "no_address"),
        ("reactivation", "p4"): ("suppressed", "opted_out"),
    }


def test_dry_run_in_quiet_hours_defers(env, capsys, monkeypatch):
    tmp_path, _ = env
    monkeypatch.setenv("OUTBOUND_RUN_TIME", "18:30")  # reactivation window closes at 17:00
    out_csv = tmp_path / "plan.csv"
    assert cli.cmd_dry_run(AS_OF, str(out_csv)) == 0
    rows = list(csv.DictReader(out_csv.open()))
    got = {(r["campaign"], r["patient_id"]): r["decision"] for r in rows}
    assert got[("reactivation", "p1")] == "deferred"
    assert got[("billing", "p2")] == "send"  # default window 08:00-20:00


def test_send_without_a_key_is_a_dry_run(env, capsys):
    _, state = env
    assert cli.cmd_send(AS_OF) == 0
    assert "no sender is configured (SENDGRID_API_KEY, TWILIO_ACCOUNT_SID): dry run" in (
        capsys.readouterr().out
    )
    engine = connect_state(state)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(L.ledger)).scalar() == 0


@pytest.mark.parametrize("env", [TODAY], indirect=True)
def test_send_then_send_again(env, capsys, monkeypatch, fake_sendgrid, window_around_now):
    tmp_path, state = env
    window = window_around_now("Australia/Sydney")
    for name in ("reactivation.yaml", "billing.yaml"):
        path = tmp_path / "campaigns" / name
        text = "\n".join(ln for ln in path.read_text().splitlines() if "send_window" not in ln)
        path.write_text(text + "\n" + window)
    monkeypatch.setenv("SENDGRID_API_KEY", "test-key")
    monkeypatch.setenv("SENDGRID_API_HOST", fake_sendgrid.url)
    monkeypatch.setenv("OUTBOUND_FROM_EMAIL", "clinic@clinic.example")
    assert cli.cmd_send(TODAY) == 0
    out = capsys.readouterr().out
    assert "billing: planned 1, already in ledger 0, sent 1, failed 0, requests 1" in out
    assert "reactivation: planned 1, already in ledger 0, sent 1, failed 0, requests 1" in out
    # No names or addresses on stdout.
    assert "ann@" not in out and "Ann" not in out
    assert sorted(fake_sendgrid.addresses) == ["ann@clinic.example", "bob@clinic.example"]
    assert cli.cmd_send(TODAY) == 0
    out = capsys.readouterr().out
    assert "reactivation: planned 1, already in ledger 1, sent 0" in out
    assert len(fake_sendgrid.requests) == 2


def test_send_disabled_wins_over_a_key(env, capsys, monkeypatch, fake_sendgrid):
    monkeypatch.setenv("SENDGRID_API_KEY", "test-key")
    monkeypatch.setenv("SENDGRID_API_HOST", fake_sendgrid.url)
    monkeypatch.setenv("OUTBOUND_FROM_EMAIL", "clinic@clinic.example")
    monkeypatch.setenv("OUTBOUND_SEND_DISABLED", "1")
    assert cli.cmd_send(AS_OF) == 0
    assert "OUTBOUND_SEND_DISABLED is set: dry run" in capsys.readouterr().out
    assert fake_sendgrid.requests == []


def test_send_with_a_key_but_no_sender_address_is_an_error(env, capsys, monkeypatch):
    monkeypatch.setenv("SENDGRID_API_KEY", "test-key")
    monkeypatch.delenv("OUTBOUND_FROM_EMAIL", raising=False)
    assert cli.cmd_send(AS_OF) == 2
    assert "OUTBOUND_FROM_EMAIL is not set" in capsys.readouterr().err


def test_bad_campaign_file_is_reported(env, capsys):
    tmp_path, _ = env
    (tmp_path / "campaigns" / "broken.yaml").write_text(
        CAMPAIGN.replace("priority: 50", "priority: -1")
    )
    # The broken file is reported and left out; the other campaigns are planned.
    assert cli.cmd_dry_run(AS_OF, None) == 1
    out, err = capsys.readouterr()
    assert "broken.yaml: priority: Input should be greater than or equal to 0" in err
    assert "1 campaign file(s) cannot run and were left out; the others ran" in err
    assert "reactivation" in out and "billing" in out


SMS_CAMPAIGN = """
name: SMS recall
segment: lapsed-physio-6-12mo
channel: sms
template: {local: reactivation}
priority: 50
schedule: {every: day}
send_window: {start: "09:00", end: "17:00"}
"""


def test_dry_run_shows_each_sms_encoding_and_parts(tmp_path, monkeypatch, make_warehouse, capsys):
    day = date.fromisoformat(AS_OF)
    patients = [
        ("p1", "Ann", None, "0412 345 678", None, None),
        # ë is not in the GSM-7 set: the whole message goes as UCS-2.
        ("p2", "Zoë", None, "0413 000 111", None, None),
        ("p3", "Cy", None, "not a number", None, None),
    ]
    membership = [("lapsed-physio-6-12mo", p[0], None, day) for p in patients]
    db = make_warehouse(tmp_path / "wh.duckdb", patients, membership)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "sms-recall.yaml").write_text(SMS_CAMPAIGN)
    for name, value in {"DUCKDB_PATH": str(db), "STATE_DB_URL": f"sqlite:///{tmp_path / 's.db'}",
                        "CLINIC_TIMEZONE": "Australia/Sydney", "CAMPAIGNS_PATH": str(campaigns),
                        "OUTBOUND_RUN_TIME": "10:00", "CLINIC_NAME": "Harbour Physio"}.items():
        monkeypatch.setenv(name, value)  # fmt: skip
    monkeypatch.delenv("SEGMENTS_PATH", raising=False)
    out_csv = tmp_path / "plan.csv"
    assert cli.cmd_dry_run(AS_OF, str(out_csv)) == 0
    text = capsys.readouterr().out
    # "Harbour Physio: Hi Ann, it's been ... find a time. Reply STOP to opt out." is 147
    # characters: GSM-7 in one part; the same with Zoë is UCS-2, 67 + 67 + 13: 3 parts.
    table = text.split("SMS as they would go out")[1].splitlines()
    assert table[1].split() == ["campaign", "messages", "gsm_7", "ucs_2", "segments", "longest"]
    assert table[3].split() == ["sms-recall", "2", "1", "1", "4", "147"]
    with out_csv.open() as f:
        rows = {r["patient_id"]: r for r in csv.DictReader(f)}
    assert (rows["p1"]["encoding"], rows["p1"]["segments"]) == ("GSM-7", "1")
    assert (rows["p2"]["encoding"], rows["p2"]["segments"]) == ("UCS-2", "3")
    assert (rows["p3"]["reason"], rows["p3"]["encoding"]) == ("no_address", "")


def test_test_send_renders_a_made_up_patient_and_writes_no_ledger(
    env, capsys, fake_sendgrid, monkeypatch
):
    tmp_path, state = env
    monkeypatch.setenv("SENDGRID_API_KEY", "test-key")
    monkeypatch.setenv("SENDGRID_API_HOST", fake_sendgrid.url)
    monkeypatch.setenv("OUTBOUND_FROM_EMAIL", "clinic@clinic.example")
    assert cli.cmd_test_send("reactivation", "me@clinic.example", None) == 0
    assert "sent a test of reactivation by email to me@clinic.example" in capsys.readouterr().out
    (body,) = fake_sendgrid.requests
    p = body["personalizations"][0]
    assert p["to"] == [{"email": "me@clinic.example"}]
    assert p["substitutions"]["-first_name-"] == "Alex"  # made up, no patient's
    assert body["subject"].startswith("[test] ")
    engine = connect_state(state)
    if sa.inspect(engine).has_table(L.ledger.name):  # a test never touches the ledger
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(L.ledger)).scalar_one() == 0
    # With --patient, that patient's fields; a wrong address or slug is a clear error.
    assert cli.cmd_test_send("reactivation", "me@clinic.example", "p2") == 0
    assert fake_sendgrid.requests[1]["personalizations"][0]["substitutions"][
        "-first_name-"] == "Bob"  # fmt: skip
    assert cli.cmd_test_send("reactivation", "not an address", None) == 2
    assert "is not an email address" in capsys.readouterr().err
    assert cli.cmd_test_send("nope", "me@clinic.example", None) == 2
    assert "no campaign 'nope' that can run" in capsys.readouterr().err
    assert cli.cmd_test_send("reactivation", "me@clinic.example", "nobody") == 2
    assert "no patient 'nobody'" in capsys.readouterr().err
