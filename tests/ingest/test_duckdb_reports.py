"""DuckDB's reports of faulty records are matched to the scanned records without falling
back to Python's parser, in files of LF and of CRLF line ends.

DuckDB (2.0) says where a faulty record starts one byte late in a file of LF line ends;
the loader takes such a report back to the start of its line. Were it not matched, the
whole file would be split again by Python's csv parser: the same answer, many times
slower. Each file here has a record with a field too many and one with a field too few
(and a quote inside a value that is not quoted, which both parsers keep), and the
expected lines and reasons are written out by hand.
"""

from __future__ import annotations

import pytest

import ingest.csv_reader as csv_reader

ROWS = [
    b"patient_id,first_name,last_name",  # line 1
    b"1,Ann,Lee",  # line 2
    b"2,Bo,Ng,extra",  # line 3: a field too many
    b"3,Cy",  # line 4: a field too few
    b'4,Di"x,Po',  # line 5: a quote inside a value that is not quoted: kept
    b"5,Ed,Fox",  # line 6
]


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_faulty_records_are_matched_to_their_lines_by_duckdbs_reports(
    write, load, monkeypatch, line_end
):
    split = []
    real = csv_reader._python_split
    monkeypatch.setattr(csv_reader, "_python_split",
                        lambda *a, **k: split.append(1) or real(*a, **k))  # fmt: skip
    write("patients.csv", line_end.join(ROWS) + line_end)
    write("appointments.csv", "appointment_id,patient_id,starts_at\n")
    results, con = load()
    assert split == []  # DuckDB's reports were matched; Python's parser was not needed
    assert con.execute(
        "select patient_id, first_name, _source_row from raw.patients order by 1"
    ).fetchall() == [("1", "Ann", 2), ("4", 'Di"x', 5), ("5", "Ed", 6)]
    rejected = con.execute(
        "select source_row, reason from raw.patients__rejected order by 1"
    ).fetchall()
    assert [(row, reason.split(" (")[0].split(";")[0]) for row, reason in rejected] == [
        (3, "record has more fields than the header"),
        (4, "record has fewer fields than the header"),
    ]
    assert (results["patients"].rows_in, results["patients"].loaded) == (5, 3)
