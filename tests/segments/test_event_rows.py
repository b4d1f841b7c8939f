"""Event rows of a few candidates, found through their runs in the key order events are
held in, are exactly the rows a full scan finds, from one thread or many."""

from __future__ import annotations

from datetime import date

import polars as pl

D = date(2024, 8, 31)

EVENTS_DEFINITION = """
name: Parramatta regulars
include:
  conditions:
    - {field: city, op: eq, value: Parramatta}
    - events: appointments
      where: {conditions: [{field: status, op: eq, value: attended}]}
      count: {op: gte, value: 2}
"""


def test_rows_of_finds_exactly_the_wanted_keys_rows_nulls_and_absent_keys_included():
    from segments.evaluate import GROUPED_KEY, WarehouseFrames

    appointments = pl.DataFrame({
        "appointment_id": [f"a{n}" for n in range(9)],
        "patient_id": ["P2", "P1", None, "P2", "P3", "P1", "P2", None, "P4"],
        "status": ["x"] * 9,
    })  # fmt: skip
    patients = pl.DataFrame({"patient_id": ["P1", "P2", "P3", "P4", "P5"]})
    frames = WarehouseFrames.from_frames({"appointments": appointments,
                                          "patient_features": patients})  # fmt: skip
    keys = frames.frame("patient_features", ["patient_id"])[GROUPED_KEY]
    # P2 and P4, P5 (no appointments) and a missing id: P2's three rows and P4's one.
    wanted = pl.concat([keys.gather([1, 3, 4]), pl.Series([None], dtype=keys.dtype)])
    found = frames.rows_of("appointments", ["appointment_id", "patient_id"], GROUPED_KEY, wanted)
    assert sorted(found["appointment_id"].to_list()) == ["a0", "a3", "a6", "a8"]
    # Frames serving one evaluation leave it to the caller to probe every row.
    frames.once = True
    assert frames.rows_of("appointments", ["appointment_id", "patient_id"], GROUPED_KEY,
                          wanted) is None  # fmt: skip
    # Entity frames keep their order (members' row numbers refer to it), and so are not
    # searched this way.
    assert frames.rows_of("patient_features", ["patient_id"], GROUPED_KEY, wanted) is None
    assert frames.frame("patient_features", ["patient_id"])["patient_id"].to_list() == [
        "P1", "P2", "P3", "P4", "P5"]


def test_an_events_condition_over_a_few_candidates_counts_as_over_everyone(run_segment):
    # 40 patients; the attribute condition leaves 3 (fewer than 1 in 10), so the events
    # condition looks only at their rows. By hand: P03 has 2 attended visits, P17 one (and
    # one cancelled), P29 three; P05 has two but is not a candidate.
    patients = [dict(patient_id=f"P{n:02d}", status="active", city="Sydney") for n in range(40)]
    for p in ("P03", "P17", "P29"):
        patients[int(p[1:])]["city"] = "Parramatta"
    visits = [("P29", "attended"), ("P03", "attended"), ("P17", "cancelled"),
              ("P05", "attended"), ("P29", "attended"), ("P17", "attended"),
              ("P03", "attended"), ("P05", "attended"), ("P29", "attended")]  # fmt: skip
    rows = {"patient_features": patients, "appointments": [
        dict(appointment_id=f"a{n}", patient_id=p, start_date=date(2024, 5, 1 + n),
             category="Physio", status=s) for n, (p, s) in enumerate(visits)]}  # fmt: skip
    definition = EVENTS_DEFINITION
    assert run_segment(definition, rows, D) == ["P03", "P29"]
    never = definition.replace("count: {op: gte, value: 2}", "count: {op: eq, value: 0}")
    assert run_segment(never, rows, D) == []
    once = definition.replace("count: {op: gte, value: 2}", "count: {op: eq, value: 1}")
    assert run_segment(once, rows, D) == ["P17"]


def test_evaluations_from_many_threads_at_once_agree_with_one(run_segment, warehouse_for,
                                                                catalogue):  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    from segments.evaluate import WarehouseFrames, evaluate
    from segments.validation import parse_definition, read_yaml

    patients = [dict(patient_id=f"P{n:03d}", status="active", city="Sydney" if n % 7 else
                     "Parramatta") for n in range(200)]  # fmt: skip
    rows = {"patient_features": patients, "appointments": [
        dict(appointment_id=f"a{n}", patient_id=f"P{n % 200:03d}", start_date=date(2024, 5, 1),
             category="Physio", status="attended" if n % 3 else "cancelled")
        for n in range(1_000)]}  # fmt: skip
    text = EVENTS_DEFINITION.replace("count: {op: gte, value: 2}", "count: {op: gte, value: 4}")
    definition = parse_definition(read_yaml(text, "t.yaml"), "t.yaml", catalogue)
    alone = run_segment(text, rows, D)
    frames = WarehouseFrames(warehouse_for(rows))  # one set of frames, shared
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: sorted(evaluate(
            definition, frames, catalogue, D, "UTC")["patient_id"].to_list()), range(32)))
    assert alone and all(r == alone for r in results)


def test_event_rows_are_held_one_run_per_key_in_their_order_and_none_is_lost():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from segments.evaluate import _grouped

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.integers(0, 6)), max_size=60))
    def check(keys: list[int | None]) -> None:
        df = pl.DataFrame({"k": keys, "row": range(len(keys))}, schema={"k": pl.Int64,
                                                                        "row": pl.Int64})
        held = _grouped(df, "k")
        # The same rows ...
        assert sorted(held["row"].to_list()) == list(range(len(keys)))
        # ... each key's rows in one run, in the order they came in.
        seen: list[int] = []
        previous = object()
        for key in held["k"].to_list():
            if key is not None and key != previous:
                assert key not in seen, f"key {key} in two runs"
                seen.append(key)
            previous = key
        for key in set(k for k in keys if k is not None):
            assert held.filter(pl.col("k") == key)["row"].to_list() == [
                i for i, k in enumerate(keys) if k == key]
        # A frame already grouped is kept as it is.
        if held.height:
            assert _grouped(held, "k").equals(held)

    check()




def _clinic_rows() -> dict:
    # By hand: P01 and P04 (Parramatta) have 2 and 3 attended visits, P02 (Parramatta) one;
    # P03 (Sydney) has 2 but is not in Parramatta.
    patients = [dict(patient_id=f"P{n:02d}", status="active",
                     city="Sydney" if n in (0, 3) else "Parramatta") for n in range(5)]
    visits = ["P01", "P04", "P02", "P03", "P04", "P01", "P03", "P04"]
    return {"patient_features": patients, "appointments": [
        dict(appointment_id=f"a{n}", patient_id=p, start_date=date(2024, 5, 1 + n),
             category="Physio", status="attended") for n, p in enumerate(visits)]}


def test_event_frames_hold_the_patient_key_and_not_the_text_id(warehouse_for, catalogue):
    from segments.evaluate import GROUPED_KEY, WarehouseFrames, evaluate
    from segments.validation import parse_definition, read_yaml

    definition = parse_definition(read_yaml(EVENTS_DEFINITION, "t.yaml"), "t.yaml", catalogue)
    frames = WarehouseFrames(warehouse_for(_clinic_rows()))
    members = evaluate(definition, frames, catalogue, D, "UTC")
    assert sorted(members["patient_id"].to_list()) == ["P01", "P04"]
    events = frames.frame("appointments", ["patient_id", "status"])
    assert GROUPED_KEY in events.columns and "patient_id" not in events.columns
    # The patients' keys and the events' keys are the same hash of the same id.
    people = frames.frame("patient_features", ["patient_id"])
    p04 = people.filter(pl.col("patient_id") == "P04")[GROUPED_KEY][0]
    assert events.filter(pl.col(GROUPED_KEY) == p04).height == 3


def test_when_two_ids_share_a_hash_events_are_read_again_with_their_text_ids(
    warehouse_for, catalogue, monkeypatch
):
    from segments.evaluate import WarehouseFrames, evaluate
    from segments.explain import explain
    from segments.validation import parse_definition, read_yaml

    definition = parse_definition(read_yaml(EVENTS_DEFINITION, "t.yaml"), "t.yaml", catalogue)
    frames = WarehouseFrames(warehouse_for(_clinic_rows()))
    # The events are read first, by their hash alone; then the patients' ids "collide".
    assert "patient_id" not in frames.frame("appointments", ["patient_id", "status"]).columns

    def collide(self, table, df):
        if "patient_id" in df.columns and table == "patient_features":
            self._collisions.add("patient_id")

    monkeypatch.setattr(WarehouseFrames, "_check_hash_collisions", collide)
    members = evaluate(definition, frames, catalogue, D, "UTC")
    assert frames.join_key("patient_id") == "patient_id"
    assert "patient_id" in frames.frame("appointments", ["patient_id"]).columns
    assert sorted(members["patient_id"].to_list()) == ["P01", "P04"]
    (why,) = explain(definition, frames, catalogue, D, "UTC", "P02")
    assert why.found and not why.member


def test_an_event_table_read_a_few_rows_at_a_time_is_the_table(warehouse_for, run_segment,
                                                                 monkeypatch):  # fmt: skip
    """Event marts are read a batch at a time: the frame holds every row, with the same
    values (text the first batch decides to hold as categories included, even values
    that first appear in a later batch), and an events condition counts the same."""
    import segments.evaluate as E

    visits = [("P29", "attended"), ("P03", "attended"), ("P17", "cancelled"),
              ("P05", "attended"), ("P29", "attended"), ("P17", "attended"),
              ("P03", "attended"), ("P05", "did not arrive"), ("P29", "attended")]  # fmt: skip
    patients = [dict(patient_id=f"P{n:02d}", status="active", city="Parramatta")
                for n in range(40)]  # fmt: skip
    rows = {"patient_features": patients, "appointments": [
        dict(appointment_id=f"a{n}", patient_id=p, start_date=date(2024, 5, 1 + n),
             category="Physio", status=s) for n, (p, s) in enumerate(visits)]}  # fmt: skip
    db = warehouse_for(rows)
    monkeypatch.setattr(E, "BATCH_ROWS", 2)  # five batches; "did not arrive" in the fourth
    monkeypatch.setattr(E, "BATCHED_FROM", 8)  # nine rows: more than that, so in batches
    frame = E.WarehouseFrames(db).frame("appointments", ["appointment_id", "status"])
    assert frame.height == 9
    assert sorted(zip(frame["appointment_id"].to_list(), frame["status"].cast(pl.String),
                      strict=True)) == sorted((f"a{n}", s) for n, (_, s) in enumerate(visits))
    # By hand: P03 has 2 attended visits, P29 three, P05 and P17 one each.
    assert run_segment(EVENTS_DEFINITION, rows, D) == ["P03", "P29"]


def test_an_empty_event_table_read_in_batches_is_an_empty_frame(warehouse_for, monkeypatch):
    import segments.evaluate as E

    batched = []
    real = E._in_batches
    monkeypatch.setattr(E, "BATCHED_FROM", -1)  # every event table in batches
    monkeypatch.setattr(E, "_in_batches", lambda rel: batched.append(1) or real(rel))
    db = warehouse_for({"patient_features": [dict(patient_id="P1", status="active")]})
    frame = E.WarehouseFrames(db).frame("appointments", ["appointment_id", "status"])
    assert batched and frame.height == 0 and {"appointment_id", "status"} <= set(frame.columns)


def test_a_small_event_table_is_read_at_once_and_a_large_one_in_batches(warehouse_for,
                                                                        monkeypatch):  # fmt: skip
    import segments.evaluate as E

    batched = []
    real = E._in_batches
    monkeypatch.setattr(E, "_in_batches", lambda rel: batched.append(1) or real(rel))
    rows = {"patient_features": [dict(patient_id="P1", status="active")], "appointments": [
        dict(appointment_id=f"a{n}", patient_id="P1", status="attended") for n in range(3)]}
    db = warehouse_for(rows)
    monkeypatch.setattr(E, "BATCHED_FROM", 3)  # three rows are not more than three
    assert E.WarehouseFrames(db).frame("appointments", ["appointment_id"]).height == 3
    assert batched == []
    monkeypatch.setattr(E, "BATCHED_FROM", 2)
    assert E.WarehouseFrames(db).frame("appointments", ["appointment_id"]).height == 3
    assert batched == [1]
