"""Property: whatever is wrong with a file, every record is loaded or rejected."""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import duckdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.entities import entity
from ingest.inputs import count_input_rows, csv_record_lines
from ingest.load import load_entity

PATIENTS = entity("patients")
HEADER = ["patient_id", "first_name", "date_of_birth", "status", "latitude", "email"]

names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
    | st.sampled_from(',"\n '),
    max_size=8,
)
rows = st.lists(
    st.tuples(
        st.integers(1, 40).map(str),
        names,
        # Within the dates ingest accepts (earlier or later ones are rejected as placeholders).
        st.dates(date(1900, 1, 1), date(2199, 12, 31)).map(lambda d: d.isoformat()),
        st.sampled_from(["active", "inactive", "archived", "prospect"]),
        st.floats(-90, 90, allow_nan=False).map(lambda f: f"{f:.4f}"),
        st.sampled_from(["", "a@example.com"]),
    ),
    max_size=12,
)
CORRUPTIONS = [
    "bad_date",
    "drop_comma",
    "extra_field",
    "stray_quote",
    "blank_line",
    "duplicate",
    "bad_byte",
    "crlf",
    "bad_status",
    "no_id",
    "unterminated_quote",
    "literal_quote",
    "text_after_closing_quote",
    "long_value",
]


def render(records: list[tuple[str, ...]]) -> list[bytes]:
    lines = []
    for record in [tuple(HEADER), *records]:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(record)
        lines.append(buffer.getvalue().encode("utf-8"))
    return lines


def corrupt(lines: list[bytes], kind: str, at: int) -> list[bytes]:
    if len(lines) < 2:
        return lines
    i = 1 + at % (len(lines) - 1)
    line = lines[i]
    if kind == "bad_date":
        lines[i] = line.replace(b"-", b"/", 1)
    elif kind == "drop_comma":
        lines[i] = line.replace(b",", b"", 1)
    elif kind == "extra_field":
        lines[i] = line.rstrip(b"\n") + b",extra\n"
    elif kind == "stray_quote":
        lines[i] = b'"' + line
    elif kind == "blank_line":
        lines.insert(i, b"\n")
    elif kind == "duplicate":
        lines.insert(i, line)
    elif kind == "bad_byte":
        lines[i] = line.rstrip(b"\n") + b"\xff\n"
    elif kind == "crlf":
        lines = [ln.replace(b"\n", b"\r\n") for ln in lines]
    elif kind == "bad_status":
        lines[i] = line.replace(b"active", b"deceased", 1)
    elif kind == "no_id":
        lines[i] = b"," + line.split(b",", 1)[-1] if b"," in line else line
    elif kind == "unterminated_quote":
        # A quote opening a value that is never closed (an export that cut a value short).
        lines[i] = line.replace(b",", b',"', 1)
    elif kind == "literal_quote":
        lines[i] = line.replace(b",", b',5\'10" ', 1)
    elif kind == "text_after_closing_quote":
        lines[i] = line.replace(b",", b',"Bo" Jo', 1)
    elif kind == "long_value":
        # Longer than DuckDB's default record limit and Python's default field limit.
        lines[i] = line.replace(b",", b',"' + b"x" * 3_000_000 + b'",', 1)
    return lines


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=rows,
    corruptions=st.lists(st.tuples(st.sampled_from(CORRUPTIONS), st.integers(0, 100)), max_size=4),
)
def test_rows_in_equal_loaded_plus_rejected(tmp_path_factory, records, corruptions):
    folder: Path = tmp_path_factory.mktemp("extract")
    lines = render(records)
    for kind, at in corruptions:
        lines = corrupt(lines, kind, at)
    (folder / "patients.csv").write_bytes(b"".join(lines))

    con = duckdb.connect()
    try:
        result = load_entity(con, "patients", folder, "csv")
        loaded = con.execute(
            "select count(*), count(distinct patient_id) from raw.patients"
        ).fetchall()[0]
        rejected = con.execute(
            "select count(*), count(*) filter (where reason is null or reason = '') "
            "from raw.patients__rejected"
        ).fetchall()[0]
        lines = sorted(
            r[0]
            for r in con.execute(
                "select _source_row from raw.patients union all "
                "select source_row from raw.patients__rejected"
            ).fetchall()
        )
    finally:
        con.close()
    rows_in = count_input_rows(folder, PATIENTS, "csv")
    assert rows_in == result.rows_in == loaded[0] + rejected[0]
    # Every record is found again on the line where it starts, by an independent reading.
    assert lines == list(csv_record_lines(folder / "patients.csv"))
    assert loaded[0] == loaded[1], "a patient id was loaded twice"
    assert rejected[1] == 0, "a rejected row has no reason"
    if not corruptions:
        # A clean file: every record is there, duplicates of an id collapse to one row.
        assert rows_in == len(records)
        assert loaded[0] == len({r[0] for r in records})
