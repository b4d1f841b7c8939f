"""Waitlist slot offers: a freed slot goes to the next fitting waitlist patients, in the
order they joined, never twice to the same patient."""

from __future__ import annotations

from datetime import UTC, date, datetime

import duckdb
import polars as pl

from outbound.campaigns import Campaign
from outbound.channels import SendGridEmail
from outbound.run import OutboundSettings, make_plan, send_planned
from outbound.selection import RunClock
from outbound.slots import SLOT_SCHEMA, WAITLIST_SCHEMA, match_offers

AS_OF = date(2026, 11, 26)
CLOCK = RunClock.at(datetime(2026, 11, 26, 10, 0, tzinfo=UTC), "UTC")
TOMORROW_10 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TOMORROW_11 = datetime(2026, 11, 27, 11, 0, tzinfo=UTC)


def at(day: int) -> datetime:
    return datetime(2026, 10, day, 9, 0, tzinfo=UTC)


SLOTS = pl.DataFrame(
    [("k1", "s1", TOMORROW_10, "T1", "P1", "L1", ["x"]),
     ("k2", "s2", TOMORROW_11, "T2", "P2", "L1", ["c"])],  # c cancelled s2 herself
    schema=SLOT_SCHEMA, orient="row",
)  # fmt: skip
WAITLIST = pl.DataFrame(
    [
        ("d", "T1", "P9", None, at(1)),  # waiting longest, but for another practitioner
        ("a", "T1", None, None, at(2)),
        ("b", None, "P1", "L1", at(3)),
        ("c", "T2", None, None, at(4)),
        ("e", None, None, None, at(5)),  # anything
        ("f", None, None, None, at(1)),  # not in the campaign's segment
    ],
    schema=WAITLIST_SCHEMA, orient="row",
)  # fmt: skip
NONE_OFFERED = pl.DataFrame(schema={"slot_key": pl.String, "patient_id": pl.String})


def offers(per_slot: int, offered=NONE_OFFERED) -> list[tuple[str, str]]:
    got = match_offers("c", SLOTS, WAITLIST, ["a", "b", "c", "d", "e"], offered, per_slot)
    return [(slot, patient) for _, patient, slot, _ in got.rows()]


def test_each_slot_goes_to_the_next_who_fit_in_the_order_they_joined():
    # By hand. s1 (T1, P1, L1): d wants P9, so a (T1, any) first, then b (any type, P1,
    # L1). s2 (T2, P2, L1): b wants P1 and has s1 anyway; c (T2) cancelled it herself,
    # so e (anything).
    assert offers(1) == [("s1", "a"), ("s2", "e")]
    assert offers(2) == [("s1", "a"), ("s1", "b"), ("s2", "e")]
    # a was offered s1 before: never again; b is next.
    before = pl.DataFrame({"slot_key": ["k1"], "patient_id": ["a"]})
    assert offers(1, before) == [("s1", "b"), ("s2", "e")]


def build(make_warehouse, tmp_path, opted_out: tuple = ()) -> str:
    patients = [(p, p.upper(), f"{p}@clinic.example", None, None, None) for p in "abcde"]
    db = make_warehouse(tmp_path / "wh.duckdb", patients,
                        [("waitlist", p[0], None, AS_OF) for p in patients],
                        opt_outs=[(p, "email", None) for p in opted_out])  # fmt: skip
    with duckdb.connect(str(db)) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("insert into raw.appointment_types (appointment_type_id, name) values "
                    "('T1', 'Physio follow-up'), ('T2', 'Massage')")
        con.execute("insert into raw.practitioners (practitioner_id, first_name, last_name) "
                    "values ('P1', 'Sam', 'Lee'), ('P2', 'Jo', 'Park')")
        con.execute("insert into raw.locations (location_id, name) values ('L1', 'Harbour St')")
        con.execute(
            "insert into raw.appointments (appointment_id, patient_id, starts_at, "
            "appointment_type_id, practitioner_id, location_id, cancelled_at) values "
            # s1 cancelled and free; s2 cancelled but rebooked by z; s0 in the past.
            "('s1', 'x', '2026-11-27 10:00+00', 'T1', 'P1', 'L1', '2026-11-25 08:00+00'),"
            "('s2', 'y', '2026-11-27 11:00+00', 'T2', 'P2', 'L1', '2026-11-25 08:00+00'),"
            "('r2', 'z', '2026-11-27 11:00+00', 'T2', 'P2', 'L1', null),"
            "('s0', 'w', '2026-11-20 10:00+00', 'T1', 'P1', 'L1', '2026-11-19 08:00+00')")
        con.execute(
            "insert into raw.waitlist (waitlist_id, patient_id, appointment_type_id, "
            "practitioner_id, location_id, added_at) values "
            "('w1', 'a', 'T1', null, null, '2026-10-02'), ('w2', 'b', null, 'P1', 'L1', "
            "'2026-10-03'), ('w3', 'c', 'T2', null, null, '2026-10-04')")
    return str(db)


def campaign(slug: str = "slot-offers") -> Campaign:
    return Campaign.model_validate({
        "name": "Slot offers", "segment": "waitlist", "template": {"local": "slot_offer"},
        "priority": 70, "schedule": {"every": "day"}, "slug": slug,
        "unsubscribe_category": "waitlist", "slot_offers": {"per_slot": 1},
    })  # fmt: skip


def test_a_freed_slot_is_offered_once_to_the_right_patient_with_its_details(
    make_warehouse, tmp_path, state_url, engine, fake_sendgrid
):
    db = build(make_warehouse, tmp_path)
    s = OutboundSettings(duckdb_path=db, state_db_url=state_url, timezone="Australia/Sydney")
    ch = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)
    c = campaign()
    sydney = RunClock.at(datetime(2026, 11, 25, 23, 0, tzinfo=UTC), "Australia/Sydney")
    planned = make_plan(s, [c], sydney, engine)
    # Only s1 is free (s2 was rebooked, s0 is past): offered to a alone, the first in line.
    assert planned.plan.select("patient_id", "decision").rows() == [("a", "send")]
    send_planned(s, [c], planned, sydney, engine, ch)
    (body,) = fake_sendgrid.requests
    p = body["personalizations"][0]
    assert p["to"] == [{"email": "a@clinic.example"}]
    # 10:00 UTC is 21:00 in Sydney (AEDT).
    assert p["substitutions"]["-slot_starts_at-"] == "Friday 27 November, 9:00 PM"
    assert p["substitutions"]["-slot_practitioner-"] == "Sam Lee"
    assert p["substitutions"]["-slot_type-"] == "Physio follow-up"
    assert p["substitutions"]["-slot_location-"] == "Harbour St"
    # Another campaign offering slots the same day: a had s1; b is next in line.
    later = make_plan(s, [campaign("slot-offers-2")], sydney, engine)
    assert later.plan.select("patient_id").to_series().to_list() == ["b"]


def test_who_cannot_be_messaged_is_passed_over(make_warehouse, tmp_path, state_url, engine):
    db = build(make_warehouse, tmp_path, opted_out=("a",))
    s = OutboundSettings(duckdb_path=db, state_db_url=state_url, timezone="UTC")
    planned = make_plan(s, [campaign()], CLOCK, engine)
    # a opted out of email: the slot goes to b rather than waiting on a forever.
    assert planned.plan.select("patient_id", "decision").rows() == [("b", "send")]
    assert planned.slots.select("campaign", "patient_id", "appointment_id").rows() == [
        ("slot-offers", "b", "s1")]


def add_appointments(db: str, rows: str) -> None:
    with duckdb.connect(db) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("insert into raw.appointments (appointment_id, patient_id, starts_at, "
                    "ends_at, appointment_type_id, practitioner_id, location_id, cancelled_at) "
                    f"values {rows}")  # fmt: skip


def test_a_time_cancelled_twice_is_one_slot(make_warehouse, tmp_path, state_url, engine):
    db = build(make_warehouse, tmp_path)
    # s1's time was rebooked (s1b) and cancelled again: still one slot, for one patient.
    add_appointments(db, "('s1b', 'v', '2026-11-27 10:00+00', null, 'T1', 'P1', 'L1', "
                         "'2026-11-25 09:00+00')")
    s = OutboundSettings(duckdb_path=db, state_db_url=state_url, timezone="UTC")
    planned = make_plan(s, [campaign()], CLOCK, engine)
    assert planned.slots.select("patient_id").to_series().to_list() == ["a"]


def test_a_slot_someone_holds_again_is_not_offered(make_warehouse, tmp_path, state_url,
                                                   engine):  # fmt: skip
    db = build(make_warehouse, tmp_path)
    # z books 10:15-11:00 with the same practitioner, at a location left blank: the
    # cancelled 10:00 (ending 11:00) is taken.
    with duckdb.connect(db) as con:
        con.execute("update raw.appointments set ends_at = '2026-11-27 11:00+00' "
                    "where appointment_id = 's1'")  # fmt: skip
    add_appointments(db, "('r1', 'z', '2026-11-27 10:15+00', '2026-11-27 11:00+00', 'T1', "
                         "'P1', null, null)")
    s = OutboundSettings(duckdb_path=db, state_db_url=state_url, timezone="UTC")
    assert make_plan(s, [campaign()], CLOCK, engine).slots.is_empty()


def test_the_patient_who_cancelled_is_not_offered_it_back(make_warehouse, tmp_path, state_url,
                                                         engine):  # fmt: skip
    db = build(make_warehouse, tmp_path)
    with duckdb.connect(db) as con:
        con.execute("update raw.appointments set patient_id = 'a' where appointment_id = 's1'")
    s = OutboundSettings(duckdb_path=db, state_db_url=state_url, timezone="UTC")
    planned = make_plan(s, [campaign()], CLOCK, engine)
    assert planned.slots.select("patient_id").to_series().to_list() == ["b"]


def test_a_second_run_of_the_day_offers_a_new_slot_to_who_can_still_get_one(
    make_warehouse, tmp_path, state_url, engine, fake_sendgrid
):
    db = build(make_warehouse, tmp_path)
    s = OutboundSettings(duckdb_path=db, state_db_url=state_url, timezone="UTC")
    ch = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url)
    c = campaign().model_copy(update={"frequency_cap": None})
    send_planned(s, [c], make_plan(s, [c], CLOCK, engine), CLOCK, engine, ch)
    # Later the same day another slot frees up (T1 with P1 at 12:00), and e joins the
    # waitlist for anything. a already had this campaign's message today: s1 goes to b,
    # the next in line, and s3 to e; nothing waits on a.
    add_appointments(db, "('s3', 'q', '2026-11-27 12:00+00', null, 'T1', 'P1', 'L1', "
                         "'2026-11-26 09:30+00')")
    with duckdb.connect(db) as con:
        con.execute("insert into raw.waitlist (waitlist_id, patient_id, added_at) values "
                    "('w5', 'e', '2026-10-05')")
    from outbound.campaigns import FrequencyCap

    roomy = OutboundSettings(**{**s.__dict__, "cap": FrequencyCap(max_messages=5)})
    planned = make_plan(roomy, [c], CLOCK, engine)
    assert planned.slots.select("patient_id", "appointment_id").rows() == [
        ("b", "s1"), ("e", "s3")]


def test_an_offer_the_provider_never_took_may_be_made_again(
    make_warehouse, tmp_path, state_url, engine, fake_sendgrid, reply
):
    db = build(make_warehouse, tmp_path)
    s = OutboundSettings(duckdb_path=db, state_db_url=state_url, timezone="UTC")
    fake_sendgrid.script = lambda n, body: reply(503, body='{"errors": []}')
    ch = SendGridEmail(api_key="k", from_email="c@clinic.example", host=fake_sendgrid.url,
                       max_attempts=1)  # fmt: skip
    send_planned(s, [campaign()], make_plan(s, [campaign()], CLOCK, engine), CLOCK, engine, ch)
    from outbound.slots import read_offered

    assert read_offered(engine).is_empty()  # released: nothing reached a
