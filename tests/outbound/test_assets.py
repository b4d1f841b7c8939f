"""The outbound assets wired through Dagster, on a temp warehouse and state store."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
import polars as pl
import pytest

from core.settings import Settings
from orchestration.outbound import CANDIDATES, LEDGER_TABLE, SEND_PLAN, SENT, build_outbound_defs
from orchestration.resources import SendGridResource, resources_for
from outbound.checks import opted_out_in_plan, twice_in_cap_window
from outbound.run import OutboundSettings

AS_OF = date(2026, 11, 26)
# Only the clinic's real today is ever sent: the sending tests plan for it.
TODAY = datetime.now(ZoneInfo("Australia/Sydney")).date()
CAMPAIGN = """
name: Reactivation
segment: lapsed-physio-6-12mo
template: {local: reactivation}
priority: 50
schedule: {every: day}
"""


@pytest.fixture(params=[AS_OF])
def wired(request, tmp_path, monkeypatch, make_warehouse):
    day = request.param
    patients = [
        ("p1", "Ann", "ann@clinic.example", None, None, None),
        ("p2", "Bob", "bob@clinic.example", None, None, None),
        ("p3", "Cy", "cy@clinic.example", None, None, None),
    ]
    membership = [("lapsed-physio-6-12mo", p, None, day) for p in ("p1", "p2", "p3")]
    db = make_warehouse(
        tmp_path / "wh.duckdb", patients, membership, opt_outs=[("p3", "all", None)]
    )
    folder = tmp_path / "campaigns"
    folder.mkdir()
    (folder / "reactivation.yaml").write_text(CAMPAIGN)
    state = f"sqlite:///{tmp_path / 's.db'}"
    settings = Settings(duckdb_path=db, state_db_url=state, clinic_timezone="Australia/Sydney",
                        campaigns_path=folder, outbound_run_time="10:00")  # fmt: skip
    defs = build_outbound_defs(OutboundSettings.of(settings))
    resources = resources_for(settings)
    return defs, resources, db


def materialize(defs, resources, day=AS_OF):
    assets = list(defs.assets) + list(defs.asset_checks)
    return dg.materialize(assets, resources=resources, partition_key=day.isoformat())


def test_keys_and_segment_deps(wired):
    defs, resources, _ = wired
    graph = dg.Definitions(assets=list(defs.assets), resources=resources).resolve_asset_graph()
    assert set(graph.get_all_asset_keys()) >= {CANDIDATES, SEND_PLAN, SENT, LEDGER_TABLE}
    assert dg.AssetKey(["segments", "lapsed-physio-6-12mo"]) in graph.get(CANDIDATES).parent_keys
    assert graph.get(SEND_PLAN).parent_keys == {CANDIDATES}
    assert graph.get(SENT).parent_keys == {SEND_PLAN}
    # The dbt source outbound.send_ledger is this asset, downstream of the sending.
    assert graph.get(LEDGER_TABLE).parent_keys == {SENT}
    full = dg.Definitions.merge(defs, dg.Definitions(resources=resources))
    job = full.resolve_job_def("outbound_send")
    assert set(job.asset_layer.selected_asset_keys) == {CANDIDATES, SEND_PLAN, SENT, LEDGER_TABLE}
    schedule = full.resolve_schedule_def("outbound_send_hourly")
    assert schedule.cron_schedule == "5 8-19 * * *"


def test_dry_run_materialisation_plan_table_checks_and_empty_ledger(wired):
    defs, resources, db = wired
    result = materialize(defs, resources)
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "no_opted_out_patients_in_plan": True,
        "nobody_twice_in_cap_window": True,
        "campaign_files_can_run": True,
    }
    meta = result.asset_materializations_for_node("outbound__send_plan")[0].metadata
    assert meta["to_send"].value == 2 and meta["suppressed"].value == 1
    sent_meta = result.asset_materializations_for_node("sent_messages")[0].metadata
    assert sent_meta["dry_run"].value is True and sent_meta["sent"].value == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        plan = con.sql(
            "select campaign, patient_id, decision, reason, as_of from outbound.send_plan "
            "order by patient_id"
        ).fetchall()
        assert plan == [
            ("reactivation", "p1", "send", "", AS_OF),
            ("reactivation", "p2", "send", "", AS_OF),
            ("reactivation", "p3", "suppressed", "opted_out", AS_OF),
        ]
        # The analytics source always exists, empty until something is sent.
        assert con.sql("select count(*) from outbound.send_ledger").fetchall() == [(0,)]
    finally:
        con.close()


@pytest.mark.parametrize("wired", [TODAY], indirect=True)
def test_sending_materialisation_exports_the_ledger(
    wired, monkeypatch, fake_sendgrid, window_around_now, tmp_path
):
    defs, resources, db = wired
    (tmp_path / "campaigns" / "reactivation.yaml").write_text(
        CAMPAIGN + window_around_now("Australia/Sydney")
    )
    resources = {**resources, "sendgrid": SendGridResource(
        api_key="test-key", host=fake_sendgrid.url, from_email="clinic@clinic.example"
    )}  # fmt: skip
    assert materialize(defs, resources, TODAY).success
    assert sorted(fake_sendgrid.addresses) == ["ann@clinic.example", "bob@clinic.example"]
    # Same day again: the plan is the same, the ledger holds both, nothing is resent.
    result = materialize(defs, resources, TODAY)
    assert result.success and len(fake_sendgrid.requests) == 1
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["nobody_twice_in_cap_window"] is True
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.sql(
            "select campaign, patient_id, status, send_date from outbound.send_ledger order by 2"
        ).fetchall()
        report = con.sql("select campaign, sent, dry_run from outbound.send_report").fetchall()
    finally:
        con.close()
    assert rows == [("reactivation", "p1", "sent", TODAY), ("reactivation", "p2", "sent", TODAY)]
    assert report == [("reactivation", 0, False)]  # the second run: both already in ledger


def test_a_run_for_another_day_with_a_key_is_a_dry_run(wired, monkeypatch, fake_sendgrid):
    defs, resources, db = wired
    resources = {**resources, "sendgrid": SendGridResource(
        api_key="test-key", host=fake_sendgrid.url, from_email="clinic@clinic.example"
    )}  # fmt: skip
    result = materialize(defs, resources, AS_OF)  # a past day: a backfill, say
    assert result.success and fake_sendgrid.requests == []
    meta = result.asset_materializations_for_node("sent_messages")[0].metadata
    assert meta["dry_run"].value is True
    assert meta["dry_run_reason"].value == (
        f"sending is for the clinic's today only ({TODAY.isoformat()} in Australia/Sydney); "
        f"the plan for {AS_OF.isoformat()} is a dry run"
    )


def _plan(rows):
    return pl.DataFrame(
        rows, schema=["campaign", "patient_id", "channel", "decision"], orient="row"
    )


def test_opt_out_check_fails_on_a_bad_plan():
    plan = _plan(
        [
            ("a", "p1", "email", "send"),
            ("a", "p2", "email", "send"),
            ("a", "p3", "email", "suppressed"),
            ("a", "p4", "staff_email", "send"),  # staff digests list opted-out cases too
        ]
    )
    contacts = pl.DataFrame(
        {
            "patient_id": ["p1", "p2", "p3", "p4"],
            "accepted_email_marketing": [None, False, None, None],
        }
    )
    opt_outs = pl.DataFrame({"patient_id": ["p3", "p4", "p1"], "channel": ["email", "all", "sms"]})
    r = opted_out_in_plan(plan, contacts, opt_outs)
    # p2 said no to email and is planned; p3 is suppressed; p4 is a staff row; p1's is SMS.
    assert (r.passed, r.offenders, r.sample) == (False, 1, ["p2"])


def test_cap_check_counts_the_ledger_but_not_the_same_message_twice():
    plan = _plan(
        [("a", "p1", "email", "send"), ("a", "p2", "email", "send"), ("b", "p3", "email", "send")]
    )
    history = pl.DataFrame(
        {
            "campaign": ["a", "x", "x", "b"],
            "recipient": ["p1", "p2", "p3", "p3"],
            "send_date": [AS_OF, date(2026, 11, 20), date(2026, 11, 19), date(2026, 11, 26)],
            "status": ["sent", "sent", "sent", "failed"],
            "attempted_at": [
                datetime(2026, 11, 26, 9, tzinfo=UTC),
                datetime(2026, 11, 19, 10, 0, tzinfo=UTC),
                datetime(2026, 11, 19, 9, 59, tzinfo=UTC),
                datetime(2026, 11, 26, 9, tzinfo=UTC),
            ],
        }
    )
    # The window starts 7 days before 2026-11-26 10:00 UTC.
    r = twice_in_cap_window(plan, history, AS_OF, datetime(2026, 11, 19, 10, tzinfo=UTC))
    # p1: today's row is this very message (re-run) → 1. p2: sent at the window's first
    # minute → 2. p3: a minute before the window, and today's row failed → 1.
    assert (r.passed, r.sample) == (False, ["p2"])
