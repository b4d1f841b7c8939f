"""Rows that polars decides have their text read again from their own bytes in the file.

The side table keeps no text: a row whose values the SQL path does not type (here: a
boolean written ` yes `, padded), and every earlier copy of a repeated id, is read again
from its byte span by the parser that staged it. These files put such rows where the
reading again could go wrong: quoted line breaks, doubled quotes and commas, a BOM and
CRLF line ends, a last line without a line break, a copy made with LF line ends, a line
withheld for a quote never closed, and Python's parser splitting the file. Every expected
value is written out by hand from the file's text.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

import ingest.csv_reader as csv_reader

APPOINTMENTS = "appointment_id,patient_id,starts_at\n"
HEADER = b"\xef\xbb\xbfpatient_id,first_name,address,has_whatsapp\r\n"  # line 1
RECORDS = (
    b'1,"Ann\r\nMarie","1 ""Main"" St",yes\r\n'  # lines 2-3, typed in SQL, replaced later
    b'2,"Bo, Jr","Unit 3, 12 High St", yes \r\n'  # line 4
    b'3,"Cy ""C""","Flat 1\r\nBack St", yes \r\n'  # lines 5-6
    b"1,Ann,,no\r\n"  # line 7: the last copy of patient 1
    b"4,Dee,, yes "  # line 8, no line break at the end of the file
)


def loaded(con) -> list[tuple]:
    return con.execute(
        "select patient_id, first_name, address, has_whatsapp, _source_row "
        "from raw.patients order by patient_id"
    ).fetchall()


def force_python_split(monkeypatch) -> None:
    """Make DuckDB's report disagree with the scan (a reject at the header's offset), so
    that Python's parser splits the file, as it does when the two ever disagree."""
    real = csv_reader._stage

    def disagreeing(*args, **kwargs):
        errors = real(*args, **kwargs)
        fake = pl.DataFrame(
            {"position": [0], "error_type": ["CAST ERROR"], "error_message": ["forced"]},
            schema=errors.schema,
        )
        return pl.concat([errors, fake])

    monkeypatch.setattr(csv_reader, "_stage", disagreeing)


@pytest.mark.parametrize("split_by", ["duckdb", "python"])
def test_quoted_line_breaks_quotes_commas_bom_and_crlf_survive_the_reading_again(
    write, load, monkeypatch, split_by
):
    if split_by == "python":
        force_python_split(monkeypatch)
    path = write("patients.csv", HEADER + RECORDS)
    write("appointments.csv", APPOINTMENTS)
    results, con = load()
    assert loaded(con) == [
        ("1", "Ann", None, False, 7),
        ("2", "Bo, Jr", "Unit 3, 12 High St", True, 4),
        ("3", 'Cy "C"', "Flat 1\r\nBack St", True, 5),
        ("4", "Dee", None, True, 8),
    ]
    [(row, reason, record)] = con.execute(
        "select source_row, reason, record from raw.patients__rejected"
    ).fetchall()
    assert (row, reason) == (2, f"duplicate patient_id '1': replaced by the later row at {path}:7")
    values = json.loads(record)
    assert (values["patient_id"], values["first_name"], values["address"]) == (
        "1", "Ann\r\nMarie", '1 "Main" St'
    )
    assert values["has_whatsapp"] == "yes"
    assert (results["patients"].rows_in, results["patients"].loaded) == (5, 4)


def test_a_file_read_from_its_copy_with_lf_line_ends_is_read_again_from_the_copy(write, load):
    # CRLF and LF mixed: DuckDB reads a copy with LF line ends; the spans are the copy's.
    write(
        "patients.csv",
        b"patient_id,first_name,address,has_whatsapp\r\n"  # line 1
        b'2,"Bo, Jr","Unit 3\n12 High St", yes \n'  # lines 2-3
        b"5,Eve,, yes \r\n"  # line 4
        b"6,Flo,x,true\n",  # line 5
    )
    write("appointments.csv", APPOINTMENTS)
    _, con = load()
    assert loaded(con) == [
        ("2", "Bo, Jr", "Unit 3\n12 High St", True, 2),
        ("5", "Eve", None, True, 4),
        ("6", "Flo", "x", True, 5),
    ]


def test_rows_after_a_quote_never_closed_are_read_again_at_their_own_lines(write, load):
    # Line 2 opens a quote it never closes: it is withheld (DuckDB reads a copy with it
    # emptied) and rejected alone; the rows after it are read again from their bytes.
    write(
        "patients.csv",
        b"patient_id,first_name,address,has_whatsapp\n"  # line 1
        b'6,"Fay,,yes\n'  # line 2
        b'7,Gus,"A\nB", yes \n'  # lines 3-4
        b"8,Hal,, no \n",  # line 5
    )
    write("appointments.csv", APPOINTMENTS)
    _, con = load()
    assert loaded(con) == [("7", "Gus", "A\nB", True, 3), ("8", "Hal", None, False, 5)]
    rejected = con.execute("select source_row, reason from raw.patients__rejected").fetchall()
    assert rejected == [(2, csv_reader.UNCLOSED_REASON)]
