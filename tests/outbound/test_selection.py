"""The planner: each suppression reason worked by hand, quiet hours across time zones,
and hypothesis properties over random members, opt-outs, priorities and histories."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbound.campaigns import Campaign
from outbound.selection import (
    CONTACTS_SCHEMA,
    HISTORY_SCHEMA,
    MEMBERS_SCHEMA,
    OPT_OUTS_SCHEMA,
    RunClock,
    build_candidates,
    plan_sends,
    summarise,
)

AS_OF = date(2026, 11, 26)  # a Thursday
NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def camp(slug: str, segment: str, priority: int, **kw) -> Campaign:
    data = {
        "name": slug,
        "segment": segment,
        "template": {"local": "reactivation"},
        "priority": priority,
        "schedule": {"every": "day"},
        "slug": slug,
        **kw,
    }
    return Campaign.model_validate(data)


def frames(members, contacts, opt_outs=(), history=()):
    return (
        pl.DataFrame(list(members), schema=list(MEMBERS_SCHEMA), orient="row").cast(MEMBERS_SCHEMA),
        pl.DataFrame(list(contacts), schema=list(CONTACTS_SCHEMA), orient="row").cast(
            CONTACTS_SCHEMA
        ),
        pl.DataFrame(list(opt_outs), schema=list(OPT_OUTS_SCHEMA), orient="row").cast(
            OPT_OUTS_SCHEMA
        ),
        pl.DataFrame(list(history), schema=list(HISTORY_SCHEMA), orient="row").cast(HISTORY_SCHEMA),
    )


def run_plan(campaigns, members, contacts, opt_outs=(), history=(), clock=None, cap=None):
    m, c, o, h = frames(members, contacts, opt_outs, history)
    clock = clock or RunClock.at(datetime(2026, 11, 26, 10, 0, tzinfo=UTC), "UTC")
    cands = build_candidates(campaigns, m, clock.as_of)
    return plan_sends(campaigns, cands, c, o, h, clock, cap)


def decisions(plan: pl.DataFrame) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (r["campaign"], r["patient_id"]): (r["decision"], r["reason"])
        for r in plan.filter(pl.col("channel") == "email").iter_rows(named=True)
    }


OWN = object()  # the patient's own address, <pid>@clinic.example


def contact(pid, email=OWN, consent=None):
    return (pid, "Name", f"{pid}@clinic.example" if email is OWN else email, None, consent, None)


def at(*parts: int) -> datetime:
    """A moment in UTC (when a ledger row's request was made)."""
    return datetime(*parts, tzinfo=UTC)


def test_each_suppression_reason_worked_by_hand():
    alpha = camp("alpha", "seg-a", 50)
    ids = [f"p{i}" for i in range(1, 18)]
    members = [("seg-a", p, None) for p in ids]
    contacts = [
        contact("p1"),
        contact("p2"),
        contact("p3"),
        contact("p4", consent=False),
        contact("p5"),
        contact("p6", email="not-an-email"),
        contact("p7", email=None),
        # p8 has no patient row at all
        contact("p9", email="  "),
        contact("p10"),
        contact("p11"),
        contact("p12"),
        contact("p13", email=" padded@clinic.example "),
        contact("p14"),
        contact("p15"),
        contact("p16"),
        contact("p17"),
    ]
    opt_outs = [("p2", "email"), ("p3", "all"), ("p5", "sms"), ("p9", "email")]
    # Now is 2026-11-26 10:00 UTC: the 7-day window counts requests from 11-19 10:00 on.
    history = [
        ("other", "p10", date(2026, 11, 23), "sent", at(2026, 11, 23, 10)),  # 3 days ago
        ("other", "p11", date(2026, 11, 19), "sent", at(2026, 11, 19, 9, 59)),  # 7d 1min ago
        ("other", "p16", date(2026, 11, 19), "sent", at(2026, 11, 19, 10)),  # exactly 7 days
        ("other", "p12", date(2026, 11, 25), "failed", at(2026, 11, 25, 10)),  # never reached
        ("other", "p14", date(2026, 11, 25), "sandbox", at(2026, 11, 25, 10)),  # not delivered
        ("other", "p15", date(2026, 11, 24), "unknown", at(2026, 11, 24, 10)),  # may have been
        ("other", "staff", date(2026, 11, 25), "sent", at(2026, 11, 25, 10)),  # staff digest
        # Planned for another day (a backfill) but requested yesterday: it counts by when
        # it was sent, not by the day it was planned for.
        ("other", "p17", date(2026, 6, 30), "sent", at(2026, 11, 25, 18)),
    ]
    got = decisions(run_plan([alpha], members, contacts, opt_outs, history))
    expected = {
        "p1": ("send", ""),
        "p2": ("suppressed", "opted_out"),  # email opt-out
        "p3": ("suppressed", "opted_out"),  # 'all' covers email
        "p4": ("suppressed", "opted_out"),  # consent explicitly false
        "p5": ("send", ""),  # an SMS opt-out says nothing about email
        "p6": ("suppressed", "no_address"),
        "p7": ("suppressed", "no_address"),
        "p8": ("suppressed", "no_address"),
        "p9": ("suppressed", "opted_out"),  # opt-out is checked before the address
        "p10": ("suppressed", "frequency_cap"),
        "p11": ("send", ""),
        "p12": ("send", ""),
        "p13": ("send", ""),  # surrounding blanks do not make an address unusable
        "p14": ("send", ""),
        "p15": ("suppressed", "frequency_cap"),
        "p16": ("suppressed", "frequency_cap"),
        "p17": ("suppressed", "frequency_cap"),
    }
    assert got == {("alpha", p): v for p, v in expected.items()}


def test_patient_records_sharing_an_address_are_one_recipient():
    # Duplicate records of one person (the same address, whatever its case and blanks).
    alpha, beta = camp("alpha", "seg-a", 50), camp("beta", "seg-b", 80)
    members = [("seg-a", p, None) for p in ("p1", "p3", "p4", "p5", "p7", "p9", "p11")]
    members += [("seg-b", "p10", None)]
    contacts = [
        contact("p1", email="Ann@Clinic.example "), contact("p2", email="ann@clinic.example"),
        contact("p3", email="bo@x.example"), contact("p4", email=" BO@x.example"),
        contact("p5", email="cy@x.example"), contact("p6", email="cy@x.example"),
        contact("p7", email="di@x.example"), contact("p8", email="di@x.example", consent=False),
        contact("p9", email="ed@x.example"), contact("p10", email="ed@x.example"),
        contact("p11", email="fay@x.example"),
    ]  # fmt: skip
    # p2 (not a member of anything) opted out of email; p6 was emailed 2 days ago.
    opt_outs = [("p2", "email")]
    history = [("other", "p6", date(2026, 11, 24), "sent", at(2026, 11, 24, 10))]
    plan = run_plan([alpha, beta], members, contacts, opt_outs, history)
    got = decisions(plan)
    assert got == {
        ("alpha", "p1"): ("suppressed", "opted_out"),  # the address opted out via p2
        ("alpha", "p3"): ("send", ""),  # the lower patient id of the two
        ("alpha", "p4"): ("suppressed", "same_address"),
        ("alpha", "p5"): ("suppressed", "frequency_cap"),  # the address had a message
        ("alpha", "p7"): ("suppressed", "opted_out"),  # consent refused on p8
        ("alpha", "p9"): ("suppressed", "lower_priority"),  # beta (80) claims the address
        ("beta", "p10"): ("send", ""),
        ("alpha", "p11"): ("send", ""),
    }
    details = {r["patient_id"]: r["detail"] for r in plan.iter_rows(named=True)}
    assert details["p1"] == details["p7"] == "the address opted out on another patient record"
    assert details["p4"] == "the address is messaged for another patient record"
    assert details["p9"] == "claimed by beta"


def test_explicit_consent_campaign_needs_a_yes():
    bday = camp("bday", "seg", 10, requires_explicit_consent=True)
    members = [("seg", p, None) for p in ("yes", "unknown", "no")]
    contacts = [contact("yes", consent=True), contact("unknown"), contact("no", consent=False)]
    got = decisions(run_plan([bday], members, contacts))
    assert got == {
        ("bday", "yes"): ("send", ""),
        ("bday", "unknown"): ("suppressed", "no_consent"),
        ("bday", "no"): ("suppressed", "opted_out"),
    }


def test_priority_and_deterministic_ties():
    low = camp("low", "seg-low", 20)
    beta = camp("beta", "seg-hi", 70)
    gamma = camp("gamma", "seg-tie", 70)
    members = [
        ("seg-low", "p1", None),
        ("seg-hi", "p1", None),
        ("seg-hi", "p2", None),
        ("seg-tie", "p2", None),
        ("seg-low", "p3", None),
        ("seg-hi", "p3", None),
    ]
    contacts = [contact("p1"), contact("p2"), contact("p3")]
    # p3 opted out: suppressed by both campaigns for that reason, not by priority.
    got = decisions(run_plan([low, beta, gamma], members, contacts, [("p3", "email")]))
    assert got == {
        ("beta", "p1"): ("send", ""),
        ("low", "p1"): ("suppressed", "lower_priority"),
        # 70 vs 70: "beta" sorts before "gamma" and wins.
        ("beta", "p2"): ("send", ""),
        ("gamma", "p2"): ("suppressed", "lower_priority"),
        ("beta", "p3"): ("suppressed", "opted_out"),
        ("low", "p3"): ("suppressed", "opted_out"),
    }
    plan = run_plan([low, beta, gamma], members, contacts)
    detail = plan.filter((pl.col("campaign") == "low") & (pl.col("patient_id") == "p1"))["detail"]
    assert detail.to_list() == ["claimed by beta"]


def test_capped_winner_leaves_the_patient_to_nobody_but_a_higher_cap_campaign():
    # 'hi' has a 30-day cap override; 'lo' uses the global 7 days. A message 10 days ago
    # caps 'hi' (inside 30 days) but not 'lo' (outside 7), so 'lo' claims the patient.
    hi = camp("hi", "seg", 90, frequency_cap={"max_messages": 1, "window_days": 30})
    lo = camp("lo", "seg", 10)
    history = [("old", "p1", AS_OF - timedelta(days=10), "sent", at(2026, 11, 16, 10))]
    got = decisions(run_plan([hi, lo], [("seg", "p1", None)], [contact("p1")], (), history))
    assert got == {("hi", "p1"): ("suppressed", "frequency_cap"), ("lo", "p1"): ("send", "")}


def test_rerun_of_the_same_day_does_not_cap_its_own_message():
    # The ledger already holds alpha→p1 for today (a re-run): the plan is unchanged.
    # beta→p1 today counts as a prior message for any other campaign.
    alpha, gamma = camp("alpha", "seg", 50), camp("gamma", "seg2", 40)
    history = [
        ("alpha", "p1", AS_OF, "sent", at(2026, 11, 26, 9)),
        ("beta", "p2", AS_OF, "sent", at(2026, 11, 26, 9)),
    ]
    members = [("seg", "p1", None), ("seg2", "p2", None)]
    got = decisions(run_plan([alpha, gamma], members, [contact("p1"), contact("p2")], (), history))
    assert got == {("alpha", "p1"): ("send", ""), ("gamma", "p2"): ("suppressed", "frequency_cap")}


def test_quiet_hours_defer_and_the_deferred_claim_still_wins():
    lunch = camp(
        "lunch",
        "seg",
        90,
        send_window={"start": "09:00", "end": "17:00"},
        quiet_hours={"start": "12:00", "end": "13:00"},
    )
    other = camp("other", "seg", 10)
    clock = RunClock.at(datetime(2026, 11, 26, 12, 30, tzinfo=UTC), "UTC")
    plan = run_plan([lunch, other], [("seg", "p1", None)], [contact("p1")], clock=clock)
    assert decisions(plan) == {
        ("lunch", "p1"): ("deferred", "quiet_hours"),
        ("other", "p1"): ("suppressed", "lower_priority"),
    }
    assert plan.filter(pl.col("campaign") == "lunch")["detail"].to_list() == [
        "next window 2026-11-26T13:00+00:00"
    ]


def test_quiet_hours_use_the_clinic_clock_across_a_date_boundary():
    window = {"start": "09:00", "end": "17:00"}
    friday = camp(
        "friday", "seg", 50, schedule={"every": "week", "days": ["fri"]}, send_window=window
    )
    thursday = camp("thursday", "seg", 40, schedule={"every": "week", "days": ["thu"]})
    members, contacts = [("seg", "p1", None)], [contact("p1")]
    # 22:30 UTC Thursday 26 Nov is 09:30 Friday 27 Nov in Sydney (AEDT, UTC+11): the
    # as-of date is Friday, only the Friday campaign runs, and 09:30 is inside its window
    # (in UTC terms 22:30 would be outside it).
    clock = RunClock.at(datetime(2026, 11, 26, 22, 30, tzinfo=UTC), "Australia/Sydney")
    assert clock.as_of == date(2026, 11, 27)
    plan = run_plan([friday, thursday], members, contacts, clock=clock)
    assert decisions(plan) == {("friday", "p1"): ("send", "")}
    # An hour earlier it is 08:30 in Sydney: deferred to 09:00 local.
    clock = RunClock.at(datetime(2026, 11, 26, 21, 30, tzinfo=UTC), "Australia/Sydney")
    plan = run_plan([friday, thursday], members, contacts, clock=clock)
    assert decisions(plan) == {("friday", "p1"): ("deferred", "quiet_hours")}
    assert plan["detail"].to_list() == ["next window 2026-11-27T09:00+11:00"]


def test_overnight_quiet_hours_and_a_daylight_saving_change():
    # Quiet 21:00-07:00 wraps midnight; the send window opens at 08:00. On Saturday
    # 3 Oct 2026 at 22:00 in Sydney (UTC+10, 12:00 UTC) the next chance is Sunday 08:00,
    # after clocks went forward at 02:00: UTC+11.
    night = camp("night", "seg", 50, quiet_hours={"start": "21:00", "end": "07:00"})
    clock = RunClock.at(datetime(2026, 10, 3, 12, 0, tzinfo=UTC), "Australia/Sydney")
    assert clock.local_now.isoformat() == "2026-10-03T22:00:00+10:00"
    plan = run_plan([night], [("seg", "p1", None)], [contact("p1")], clock=clock)
    assert decisions(plan) == {("night", "p1"): ("deferred", "quiet_hours")}
    assert plan["detail"].to_list() == ["next window 2026-10-04T08:00+11:00"]


def test_paused_and_unscheduled_campaigns_have_no_candidates():
    paused = camp("paused", "seg", 50, enabled=False)
    once = camp("once", "seg", 40, schedule={"every": "once", "on": "2026-12-01"})
    assert run_plan([paused, once], [("seg", "p1", None)], [contact("p1")]).is_empty()


def test_case_campaign_one_message_per_patient_and_every_case_in_the_digest():
    rem = camp("rem", "cases", 90, staff_digest={"to": ["desk@clinic.example"]})
    members = [("cases", "p1", "c2"), ("cases", "p1", "c1"), ("cases", "p2", "c3")]
    # p2 opted out: no patient message, but staff still see the case.
    plan = run_plan([rem], members, [contact("p1"), contact("p2")], [("p2", "all")])
    rows = plan.select("patient_id", "case_id", "channel", "decision", "reason").rows()
    assert rows == [
        ("p1", "c1", "email", "send", ""),
        ("p2", "c3", "email", "suppressed", "opted_out"),
        ("p1", "c1", "staff_email", "send", ""),
        ("p1", "c2", "staff_email", "send", ""),
        ("p2", "c3", "staff_email", "send", ""),
    ]


def test_summary_counts_per_campaign():
    a, b = camp("a", "seg", 50), camp("b", "seg", 10)
    members = [("seg", p, None) for p in ("p1", "p2", "p3")]
    contacts = [contact("p1"), contact("p2", email=None), contact("p3")]
    s = summarise(run_plan([a, b], members, contacts, [("p3", "email")]))
    # a: p1 send, p2 no_address, p3 opted_out; b: p1 lower_priority, p2, p3 as for a.
    assert s.select(
        "campaign", "eligible", "opted_out", "no_address", "lower_priority", "to_send"
    ).rows() == [
        ("a", 3, 1, 1, 0, 1),
        ("b", 3, 1, 1, 1, 0),
    ]


# --- properties -------------------------------------------------------------------

PATIENTS = [f"p{i}" for i in range(8)]
SLUGS = ["c-a", "c-b", "c-c", "c-d"]


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 4))
    campaigns = [camp(SLUGS[i], f"seg-{i}", draw(st.integers(0, 3))) for i in range(n)]
    members = draw(
        st.lists(
            st.tuples(st.sampled_from([f"seg-{i}" for i in range(n)]), st.sampled_from(PATIENTS)),
            max_size=25,
        )
    )
    contacts = [
        (
            p,
            "N",
            draw(st.sampled_from(["a@b.co", None, "bad"])),
            None,
            draw(st.sampled_from([True, False, None])),
            None,
        )
        for p in PATIENTS
    ]
    opt_outs = draw(
        st.lists(st.tuples(st.sampled_from(PATIENTS), st.sampled_from(["email", "all", "sms"])))
    )
    history = draw(
        st.lists(
            st.tuples(
                st.sampled_from([*SLUGS, "old"]),
                st.sampled_from(PATIENTS),
                # The day a message was planned for says nothing: any day, even a future one.
                st.integers(-30, 30).map(lambda d: AS_OF - timedelta(days=d)),
                st.sampled_from(["sent", "failed", "unknown", "pending", "sandbox"]),
                # When it was requested: up to 12 days before now (10:00 on AS_OF).
                st.integers(1, 12 * 24 * 60).map(lambda m: NOW - timedelta(minutes=m)),
            ),
            max_size=12,
        )
    )
    return campaigns, [(s, p, None) for s, p in members], contacts, opt_outs, history


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_properties_opt_outs_cap_and_priority(scenario):
    campaigns, members, contacts, opt_outs, history = scenario
    plan = run_plan(campaigns, members, contacts, opt_outs, history)
    sends = plan.filter(pl.col("decision") == "send")
    sent_to = sends["patient_id"].to_list()

    # Nobody opted out of email (or of everything, or with consent false) is planned.
    refused = {p for p, ch in opt_outs if ch in ("email", "all")}
    refused |= {c[0] for c in contacts if c[4] is False}
    assert not refused & set(sent_to)

    # Nobody gets two messages inside the 7-day window: at most one now, and none to a
    # patient with a possibly delivered message requested in the 7 days (168 hours) before.
    assert len(sent_to) == len(set(sent_to))
    recent = {
        p
        for campaign, p, day, status, when in history
        if status in ("sent", "pending", "unknown")
        and when >= NOW - timedelta(days=7)
        # the same campaign's row for today is this same message, re-run
        and not (day == AS_OF and any(s["campaign"] == campaign and s["patient_id"] == p
                                      for s in sends.iter_rows(named=True)))
    }  # fmt: skip
    assert not recent & set(sent_to)

    # Of competing campaigns only the highest priority (ties: first slug) claims a patient.
    prio = {c.slug: c.priority for c in campaigns}
    segs = {c.segment: c.slug for c in campaigns}
    for p in set(sent_to):
        competing = {segs[s] for s, q, _ in members if q == p}
        winner = sends.filter(pl.col("patient_id") == p)["campaign"].item()
        best = min(competing, key=lambda s: (-prio[s], s))
        assert winner == best
        others = plan.filter((pl.col("patient_id") == p) & (pl.col("campaign") != winner))
        assert set(others["reason"].to_list()) <= {"lower_priority"}


def test_a_patient_record_given_twice_in_the_contacts_is_refused_with_a_reason():
    # Two rows for p1 would make two candidates of one (campaign, patient): the planner
    # says what is wrong instead of planning twice.
    twice = [contact("p1"), contact("p1", email="other@clinic.example")]
    with pytest.raises(ValueError, match="more than one row for a patient_id"):
        run_plan([camp("a", "seg", 10)], [("seg", "p1", None)], twice)
    # The same record once plans one message.
    plan = run_plan([camp("a", "seg", 10)], [("seg", "p1", None)], twice[:1])
    assert decisions(plan) == {("a", "p1"): ("send", "")}
