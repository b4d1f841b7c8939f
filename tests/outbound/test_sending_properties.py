"""Property: whatever sequence of sends (for any as-of day, in any time zone) and opt-outs
(of email, SMS or all, from any source) happens, across both channels nobody (no patient,
no address) is messaged twice inside the cap window by wall-clock time, and nobody is
messaged on a channel once they, or anyone with the same address, opted out of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import duckdb
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.state_store import connect_state, migrate
from outbound import ledger as L
from outbound.campaigns import Campaign, FrequencyCap
from outbound.channels import BatchOutcome, Content, Recipient
from outbound.run import OutboundSettings, make_plan, send_planned
from outbound.selection import RunClock
from segments.members import ensure_membership_tables

PATIENTS = [f"p{i}" for i in range(6)]
START = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)
DAYS = [date(2026, 6, 25) + timedelta(days=d) for d in range(120)]
ZONES = ["UTC", "Australia/Sydney", "Pacific/Kiritimati", "America/Los_Angeles"]
GLOBAL_WINDOW = 7


def camp(slug: str, priority: int, **kw) -> Campaign:
    return Campaign.model_validate(
        {"name": slug, "segment": "seg", "template": {"local": "reactivation"},
         "priority": priority, "schedule": {"every": "day"}, "slug": slug,
         "send_window": {"start": "00:00", "end": "23:59"}, **kw}
    )  # fmt: skip


# Campaigns with caps of their own, longer and shorter than the global one; one by SMS.
CAMPAIGNS = [
    camp("often", 10, unsubscribe_category="general"),
    camp("rarely", 50, frequency_cap={"max_messages": 1, "window_days": 10},
         unsubscribe_category="reactivation"),
    camp("texts", 60, channel="sms", frequency_cap={"max_messages": 1, "window_days": 3},
         unsubscribe_category="recalls"),
]
CATEGORY = {"often": "general", "rarely": "reactivation", "texts": "recalls"}
WINDOW = {"often": GLOBAL_WINDOW, "rarely": 10, "texts": 3}
# p0 has no usable mobile (email only); p4 and p5 share one (a parent and a child): one
# number, one person on SMS.
MOBILES = {"p0": "n/a", "p1": "0400000011", "p2": "0400000022", "p3": "0400000033",
           "p4": "0400000044", "p5": "0400000044"}  # fmt: skip


def number(patient: str) -> str:
    return "+61" + MOBILES[patient][1:]


@dataclass
class RecordingChannel:
    """The edge: what would have reached each patient, and when (the simulated clock)."""

    now: datetime
    name: str = "email"
    max_batch: int = 1000
    # (channel, address, ledger id, campaign, when)
    deliveries: list[tuple[str, str, str, str, datetime]] = field(default_factory=list)

    def send_batch(
        self, recipients: list[Recipient], content: Content, categories, custom_args
    ) -> BatchOutcome:
        campaign = custom_args["campaign"]
        for r in recipients:
            self.deliveries.append((self.name, r.address, r.ledger_id, campaign, self.now))
        return BatchOutcome(True, 1, 202, provider_message_id=f"id-{len(self.deliveries)}")


actions = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(1, 24 * 8)),  # hours
        # Mostly today's plan; sometimes another day's (which must never send).
        st.tuples(st.just("send"), st.sampled_from([0, 0, 0, 0, -3, -1, 1, 2])),
        st.tuples(st.just("send"), st.just(0)),
        # Planned, then someone opts out, then the plan is sent: the opt-out still counts.
        st.tuples(st.just("opt_out_then_send"), st.sampled_from(PATIENTS)),
        st.tuples(st.just("zone"), st.sampled_from(ZONES)),
        # An unsubscribe category left (the preference page, a one-click, a group event).
        st.tuples(st.just("category"), st.sampled_from(PATIENTS),
                  st.sampled_from(["general", "reactivation", "recalls", "all"])),
        st.tuples(
            st.just("opt_out"),
            st.sampled_from(PATIENTS),
            st.sampled_from(["learned", "extract", "consent", "stop_reply"]),
            st.sampled_from(["email", "sms", "all"]),
            # The date an extract writes on its opt-out row, relative to now: past or future.
            st.integers(-30, 30),
        ),
    ),
    min_size=1,
    max_size=16,
)


def build(folder) -> tuple[OutboundSettings, object]:
    db = folder / "wh.duckdb"
    con = duckdb.connect(str(db))
    try:
        from ingest.raw_tables import create_empty_raw_tables

        con.execute("SET TimeZone = 'UTC'")
        create_empty_raw_tables(con)
        for p in PATIENTS:
            con.execute(
                "insert into raw.patients (patient_id, first_name, email, mobile) "
                "values (?, ?, ?, ?)",
                [p, p.upper(), f"{p}@clinic.example", MOBILES[p]],
            )
        con.execute("create schema segments")
        con.execute(
            "create table segments.membership (segment_slug varchar, patient_id varchar, "
            "case_id varchar, as_of date, entered_at timestamptz)"
        )
        for day in DAYS:
            for p in PATIENTS:
                con.execute(
                    "insert into segments.membership values ('seg', ?, null, ?, null)", [p, day]
                )
        ensure_membership_tables(con)
        con.execute(
            "insert into segments.segment_runs select segment_slug, as_of, count(*), 0, 0, "
            "now() from segments.membership group by all"
        )
    finally:
        con.close()
    engine = connect_state(f"sqlite:///{folder / 'state.db'}")
    migrate(engine)
    return OutboundSettings(
        duckdb_path=str(db), state_db_url="", timezone="UTC",
        cap=FrequencyCap(max_messages=1, window_days=GLOBAL_WINDOW), clinic_name="Clinic",
    ), engine  # fmt: skip


@settings(
    max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(steps=actions)
def test_nobody_twice_in_the_window_and_nobody_after_opting_out(tmp_path_factory, steps):
    from outbound.twilio_events import STOP_SOURCE, refuse_number

    settings_, engine = build(tmp_path_factory.mktemp("sends"))
    now, zone = START, "UTC"
    email = RecordingChannel(now)
    sms = RecordingChannel(now, name="sms", max_batch=1)
    # (channel, address) → when it was first opted out; an opt-out of `all` is both.
    refused: dict[tuple[str, str], datetime] = {}
    # (patient, category) → when the patient left it.
    left: dict[tuple[str, str], datetime] = {}

    def opt_out(patient: str, channel: str, at: datetime) -> None:
        for ch in ("email", "sms") if channel == "all" else (channel,):
            address = f"{patient}@clinic.example" if ch == "email" else number(patient)
            refused.setdefault((ch, address), at)

    for step in steps:
        kind = step[0]
        if kind == "advance":
            now += timedelta(hours=step[1])
        elif kind == "zone":
            zone = step[1]
        elif kind == "category":
            _, patient, category = step
            with engine.begin() as conn:
                L.record_category_opt_outs(conn, [patient], category, "preference page", now)
            for c in ([*CATEGORY.values()] if category == "all" else [category]):
                left.setdefault((patient, c), now)
        elif kind == "opt_out":
            _, patient, source, channel, days = step
            if source == "learned":
                L.record_opt_out(engine, patient, channel, "unsubscribe link", now)
            elif source == "stop_reply":
                channel = "sms"
                with engine.begin() as conn:
                    refuse_number(conn, number(patient), [patient], STOP_SOURCE, now)
            else:
                con = duckdb.connect(settings_.duckdb_path)
                try:
                    if source == "consent":
                        channel = "email" if channel == "email" else "sms"
                        con.execute(
                            f"update raw.patients set accepted_{channel}_marketing = false "
                            "where patient_id = ?",
                            [patient],
                        )
                    else:
                        con.execute(
                            "insert into raw.opt_outs (patient_id, channel, opted_out_at) "
                            "values (?, ?, ?)",
                            [patient, channel, now + timedelta(days=days)],
                        )
                finally:
                    con.close()
            opt_out(patient, channel, now)
        else:
            today = RunClock.at(now, zone).today
            offset = step[1] if kind == "send" else 0
            clock = RunClock.at(now, zone, today + timedelta(days=offset))
            s = OutboundSettings(settings_.duckdb_path, "", zone, cap=settings_.cap,
                                 clinic_name="Clinic")  # fmt: skip
            planned = make_plan(s, CAMPAIGNS, clock, engine)
            if kind == "opt_out_then_send":
                L.record_opt_out(engine, step[1], "all", "reply STOP", now)
                opt_out(step[1], "all", now)
            email.now = sms.now = now
            send_planned(s, CAMPAIGNS, planned, clock, engine, {"email": email, "sms": sms})
        # time passes a little between steps
        now += timedelta(minutes=1)

    with engine.connect() as conn:
        patient_of = dict(conn.execute(sa.select(L.ledger.c.id, L.ledger.c.patient_id)).all())
    by_patient: dict[str, list[tuple[datetime, str]]] = {}
    by_address: dict[str, list[tuple[datetime, str]]] = {}
    for channel, address, ledger_id, campaign, at in email.deliveries + sms.deliveries:
        by_patient.setdefault(patient_of[ledger_id], []).append((at, campaign))
        gone = left.get((patient_of[ledger_id], CATEGORY[campaign]))
        assert gone is None or at < gone, (
            f"{patient_of[ledger_id]} got {campaign} at {at} after leaving its category"
        )
        by_address.setdefault(address, []).append((at, campaign))
        when = refused.get((channel, address))
        assert when is None or at < when, (
            f"{address} messaged by {channel} at {at} after opting out at {when}"
        )
    for who, sent in [*by_patient.items(), *by_address.items()]:
        sent.sort()
        for (earlier, _), (later, campaign) in zip(sent, sent[1:], strict=False):
            # The later message's campaign cap: no earlier message within its window.
            assert later - earlier > timedelta(days=WINDOW[campaign]), (
                f"{who} messaged at {earlier} and again at {later} ({campaign})"
            )
    engine.dispose()
