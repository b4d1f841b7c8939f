"""The SQL path types a row only when polars would give it the same value.

Every test loads the same file twice, once with the rows of plain text typed in SQL and
once with every row through polars (`sql_typing=False`, the reference), and requires the
same loaded rows and the same rejections with the same reasons. The values are chosen at
the edges of what the SQL path admits: padded text (including no-break and ideographic
spaces), offsets, fractions, hours past 23, leap seconds, amounts past the cent, numbers
written as 5.0 or 1e5, enumerations in any case, dates outside the range kept.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.load import load_entity

AS_OF = date(2026, 6, 30)

PADDING = ["", " ", "\t", "\u00a0", "\u3000", "\u2003"]
TIMESTAMPS = [
    "2024-03-01T09:30:00Z", "2024-03-01T09:30:00+10:00", "2024-03-01T09:30:00-05:30",
    "2024-03-01 09:30:00", "2024-03-01T09:30:00.123456Z", "2024-03-01T09:30:00.1234567Z",
    "2024-03-01T09:30:00.1234560Z", "2024-03-01T24:00:00Z", "2024-03-01T23:59:60Z",
    "2024-02-30T09:30:00Z", "2024-03-01T09:30Z", "2024-03-01", "2024-03-01T09:30:00+1000",
    "2024-03-01T09:30:00z", "1899-12-31T23:59:59Z", "1899-12-31T23:59:59-01:00",
    "2199-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "2199-12-31T23:00:00-02:00",
    "2024-03-01T09:30:00+15:00", "01/03/2024 09:30", "", "soon", "2024-03-01T9:30:00Z",
]  # fmt: skip
DATES = [
    "1980-05-17", "2026-06-30", "2026-07-01", "1900-01-01", "1899-12-31", "2024-02-29",
    "2023-02-29", "1980-5-17", "17/05/1980", "", "1980-05-17T00:00:00Z", "0001-01-01",
]  # fmt: skip
BOOLEANS = ["true", "false", "TRUE", "False", "1", "0", "yes", "NO", "y", "", "maybe"]
FLOATS = [
    "-33.8688", "151.2093", "90", "90.0", "-90.0001", "1e1", "nan", "inf", "", "1,5",
    "0.1", "-0", "12.345678901234567", "180.5",
]  # fmt: skip
MONEY = [
    "120.50", "120.5", "120", "-5.00", "$5", "-$5", "120.505", "120.500", "1e2", "",
    "12345678901234567", "0.001", "abc", "1,200.00",
]  # fmt: skip
INTEGERS = ["30", "5.0", "-1", "0", "+5", "007", "1e3", "", "99999999999999999999", "x"]
STATUSES = ["active", "ACTIVE", "Inactive", "archived", "prospect", "deceased", ""]


def cell(values: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(PADDING), st.sampled_from(values),
                     st.sampled_from(PADDING)).map("".join)  # fmt: skip


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def both_paths(folder: Path, name: str, tz: str = "Australia/Sydney") -> tuple[list, list]:
    """Load `folder/<name>.csv` by both paths; return (raw rows, rejected rows) of each."""
    results = []
    for sql in (True, False):
        con = duckdb.connect(str(folder / f"{name}-{sql}.duckdb"))
        # The session's zone must not matter: a timestamp's day is its day in UTC.
        con.execute(f"SET TimeZone = '{tz}'")
        load_entity(con, name, folder, as_of=AS_OF, batch_rows=7, sql_typing=sql)
        query = con.sql(f"select * from raw.{name} order by _source_row")
        raw = [dict(zip(query.columns, row, strict=True)) for row in query.fetchall()]
        rejected = con.sql(
            f"select * from raw.{name}__rejected order by source_row, reason"
        ).fetchall()
        con.close()
        results.append((raw, rejected))
    return results[0], results[1]


def rows_of(*columns: st.SearchStrategy[str]) -> st.SearchStrategy[list[list[str]]]:
    # Ids 1..15 repeat: the later copy wins, the earlier is rejected on both paths.
    return st.lists(st.tuples(st.integers(1, 15).map(str), *columns).map(list), max_size=25)


FILES = {
    "appointments": (
        ["appointment_id", "patient_id", "starts_at", "ends_at", "did_not_arrive"],
        rows_of(cell(["1", "2", ""]), cell(TIMESTAMPS), cell(TIMESTAMPS), cell(BOOLEANS)),
    ),
    "patients": (
        ["patient_id", "date_of_birth", "latitude", "longitude", "status", "has_whatsapp",
         "nickname"],
        rows_of(cell(DATES), cell(FLOATS), cell(FLOATS), cell(STATUSES), cell(BOOLEANS),
                cell(["Ann", "  Bo  ", "", "Zoë"])),
    ),
    "invoices": (
        ["invoice_id", "patient_id", "issue_date", "total_amount", "amount_paid", "status"],
        rows_of(cell(["7", ""]), cell(DATES), cell(MONEY), cell(MONEY),
                cell(["paid", "OPEN", "void", "pending", ""])),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FILES))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_rows_are_typed_alike_on_both_paths(tmp_path_factory, name, data):
    header, rows = FILES[name]
    folder = tmp_path_factory.mktemp(name)
    write_csv(folder / f"{name}.csv", header, data.draw(rows))
    with_sql, reference = both_paths(folder, name)
    assert with_sql == reference


def test_integers_and_quantities_are_typed_alike_on_both_paths(tmp_path):
    rows = [[str(i), "Long consult", value, "1"] for i, value in enumerate(INTEGERS)]
    write_csv(tmp_path / "appointment_types.csv",
              ["appointment_type_id", "name", "duration_minutes", "category"], rows)  # fmt: skip
    with_sql, reference = both_paths(tmp_path, "appointment_types")
    assert with_sql == reference
    # Worked out from the contract: 30, 5.0 (a whole number), 0 load; -1 is below the
    # minimum; the rest are not whole numbers; the empty value loads as null.
    loaded = {row["appointment_type_id"]: row["duration_minutes"] for row in with_sql[0]}
    assert loaded == {"0": 30, "1": 5, "3": 0, "4": 5, "5": 7, "7": None}


def test_plain_rows_are_typed_in_sql_with_their_true_line_numbers(tmp_path):
    """Records over several lines shift the line of every record after them."""
    rows = []
    for i in range(60):
        note = "line one\nline two" if i % 2 else "one line"
        rows.append([str(i), "1", "2024-03-01T09:30:00Z", note])
    write_csv(tmp_path / "appointments.csv",
              ["appointment_id", "patient_id", "starts_at", "notes"], rows)  # fmt: skip
    with_sql, reference = both_paths(tmp_path, "appointments")
    assert with_sql == reference
    lines = {int(row["appointment_id"]): row["_source_row"] for row in with_sql[0]}
    # Record i starts on line 2 + i + (the number of two-line records before it).
    assert all(lines[i] == 2 + i + i // 2 for i in range(60))


def test_line_numbers_hold_when_the_reader_works_in_parallel(tmp_path):
    """A file large enough for DuckDB to read in parallel pieces: every row still gets its
    own line (the typed rows keep the file's order), repeated ids among them."""
    count = 1_200_000
    lines = ["appointment_id,patient_id,starts_at,notes\n"]
    for i in range(count):
        # Every 100,000th record repeats the id of the record before it.
        record_id = i - 1 if i % 100_000 == 99_999 else i
        lines.append(f"{record_id},p{i % 977},2024-03-01T09:30:00Z,n{i}\n")
    (tmp_path / "appointments.csv").write_text("".join(lines))
    con = duckdb.connect(str(tmp_path / "w.duckdb"), config={"threads": 4})
    load_entity(con, "appointments", tmp_path)
    # Record i is on line i + 2 and its notes say n<i>: each loaded row must agree.
    wrong = con.execute(
        "select count(*) from raw.appointments where _source_row <> cast(substr(notes, 2) as "
        "bigint) + 2"
    ).fetchall()[0][0]
    assert wrong == 0
    assert con.execute("select count(*) from raw.appointments").fetchall()[0][0] == count - 12
    rejected = con.execute(
        "select source_row, reason from raw.appointments__rejected order by 1 limit 1"
    ).fetchall()
    assert rejected == [(99_999 + 2 - 1, "duplicate appointment_id '99998': replaced by the "
                         "later row at " + str(tmp_path / "appointments.csv") + ":100001")]
    con.close()
