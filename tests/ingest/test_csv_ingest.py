"""Canonical CSV ingest: every robustness case of the extract contract, by hand."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from ingest.csv_reader import ExtractFileError

APPOINTMENTS_HEADER = "appointment_id,patient_id,starts_at\n"


def test_bom_crlf_quoted_newlines_and_commas_keep_values_and_line_numbers(write, load):
    # Lines: 1 header (with BOM) | 2-3 patient 1 (name spans two lines) | 4 patient 2
    # (address with a comma) | 5 patient 3.
    write(
        "patients.csv",
        b"\xef\xbb\xbfpatient_id,first_name,address\r\n"
        b'1,"Ann\r\nMarie",1 Main St\r\n'
        b'2,Bo,"Unit 3, 12 High St"\r\n'
        b"3,Cy,\r\n",
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    got = con.execute(
        "select patient_id, first_name, address, _source_row from raw.patients order by 1"
    ).fetchall()
    assert got == [
        ("1", "Ann\r\nMarie", "1 Main St", 2),
        ("2", "Bo", "Unit 3, 12 High St", 4),
        ("3", "Cy", None, 5),
    ]
    assert (results["patients"].rows_in, results["patients"].loaded) == (3, 3)


def test_header_only_files_load_as_empty_tables(write, load):
    write("patients.csv", "patient_id,first_name\r\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    assert results["patients"].rows_in == 0
    assert con.execute("select count(*) from raw.patients").fetchall() == [(0,)]
    assert con.execute("select count(*) from raw.patients__rejected").fetchall() == [(0,)]


def test_columns_in_any_order_extra_columns_kept_empty_means_null(write, load):
    write(
        "patients.csv",
        "Favourite_Colour,EMAIL,status,patient_id,first_name\n"
        'teal,"",Active,7,\n'
        ',ann@example.com,prospect,8,"  Ann  "\n',
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    _, con = load()
    got = con.execute(
        "select patient_id, email, status, first_name, Favourite_Colour"
        " from raw.patients order by 1"
    ).fetchall()
    # Header names match case-insensitively; enumerations are stored as the contract spells
    # them; "" and blank mean null; surrounding space is trimmed; extra columns stay text.
    assert got == [
        ("7", None, "active", None, "teal"),
        ("8", "ann@example.com", "prospect", "Ann", None),
    ]


def test_typed_values_parse_per_contract(write, load):
    write(
        "patients.csv",
        "patient_id,date_of_birth,has_whatsapp,latitude,accepted_email_marketing,created_at\n"
        "1,2000-02-29,YES,-33.87,0,2024-03-01T09:30:00+10:00\n"
        "2,,no,,False,2024-03-01\n"
        "3,,1,,true,2024-03-01 23:30:15.5Z\n",
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    _, con = load()
    got = con.execute(
        "select patient_id, date_of_birth, has_whatsapp, latitude, accepted_email_marketing,"
        " created_at from raw.patients order by 1"
    ).fetchall()
    assert got == [
        # 09:30 at +10:00 is 23:30 UTC the day before (2024 is a leap year: 29 Feb).
        ("1", date(2000, 2, 29), True, -33.87, False, datetime(2024, 2, 29, 23, 30, tzinfo=UTC)),
        # A bare date is midnight UTC.
        ("2", None, False, None, False, datetime(2024, 3, 1, 0, 0, tzinfo=UTC)),
        ("3", None, True, None, True, datetime(2024, 3, 1, 23, 30, 15, 500000, tzinfo=UTC)),
    ]


def test_money_and_integers(write, load):
    write("patients.csv", "patient_id\n1\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    write(
        "cases.csv",
        "case_id,patient_id,name,max_sessions,max_invoiceable_amount\n"
        "c1,1,EPC,5,$450.00\n"
        "c2,1,DVA,5.0,1200\n",
    )
    _, con = load()
    got = con.execute(
        "select case_id, max_sessions, max_invoiceable_amount from raw.cases order by 1"
    ).fetchall()
    assert got == [("c1", 5, Decimal("450.00")), ("c2", 5, Decimal("1200.00"))]


def test_bad_values_are_rejected_with_file_line_and_reason(write, load):
    path = write(
        "patients.csv",
        "patient_id,date_of_birth,status,has_whatsapp,latitude\n"
        "1,1987-13-02,active,true,\n"  # line 2: impossible month
        "2,1990-01-01,deceased,maybe,\n"  # line 3: two problems in one row
        ",1990-01-01,active,,\n"  # line 4: no id
        "4,1990-01-01,active,,123.5\n"  # line 5: latitude out of range (pandera)
        "5,1990-01-01,active,,-33.9\n",  # line 6: fine
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    rejected = con.execute(
        "select source_file, source_row, reason from raw.patients__rejected order by source_row"
    ).fetchall()
    assert rejected == [
        (str(path), 2, "date_of_birth '1987-13-02' is not a date (expected YYYY-MM-DD)"),
        (
            str(path),
            3,
            "has_whatsapp 'maybe' is not a boolean (expected true/false, 1/0 or yes/no); "
            "status 'deceased' is not one of: active, inactive, archived, prospect",
        ),
        (str(path), 4, "patient_id is empty but required"),
        (str(path), 5, "latitude 123.5 is outside the allowed range (-90, 90)"),
    ]
    assert con.execute("select patient_id from raw.patients").fetchall() == [("5",)]
    assert results["patients"].rows_in == 5
    # The original text of a rejected row is kept, so nothing is lost.
    record = con.execute(
        "select record from raw.patients__rejected where source_row = 2"
    ).fetchall()[0][0]
    assert json.loads(record)["date_of_birth"] == "1987-13-02"


def test_a_one_digit_hour_is_rejected_whatever_else_the_file_holds(write, load):
    """`9:30` is not the contract's two-digit hour: rejected when it is the only odd value
    of its column as much as among others (once a faster reading accepted it alone)."""
    write("patients.csv", "patient_id\n1\n")
    path = write(
        "appointments.csv",
        APPOINTMENTS_HEADER + "a1,1,2024-03-01T9:30:00Z\n"  # line 2
        "a2,1,2024-03-01T09:30:00Z\n",
    )
    _, con = load()
    assert con.execute("select appointment_id from raw.appointments").fetchall() == [("a2",)]
    assert con.execute(
        "select source_file, source_row, reason from raw.appointments__rejected"
    ).fetchall() == [
        (str(path), 2, "starts_at '2024-03-01T9:30:00Z' is not a timestamp (expected "
         "ISO-8601, e.g. 2024-03-01T09:30:00+10:00)"),
    ]  # fmt: skip


def test_malformed_records_are_rejected_not_fatal(write, load):
    write(
        "patients.csv",
        "patient_id,first_name,last_name\n"
        "1,Ann,Lee\n"  # line 2
        "2,Bo\n"  # line 3: a field short
        "3,Cy,Ng,extra\n"  # line 4: a field too many
        "\n"  # line 5: blank, not a record
        "4,Di,Ma\n",  # line 6
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    assert con.execute(
        "select patient_id, _source_row from raw.patients order by 1"
    ).fetchall() == [
        ("1", 2),
        ("4", 6),
    ]
    rejected = con.execute(
        "select source_row, reason, record from raw.patients__rejected order by 1"
    ).fetchall()
    assert [r[0] for r in rejected] == [3, 4]
    assert rejected[0][1].startswith(
        "record has fewer fields than the header (header has 3, record has 2)"
    )
    assert rejected[1][1].startswith(
        "record has more fields than the header (header has 3, record has 4)"
    )
    assert rejected[1][2] == "3,Cy,Ng,extra"
    assert (
        results["patients"].rows_in
        == 4
        == results["patients"].loaded + results["patients"].rejected
    )


def test_duplicate_ids_last_wins_and_earlier_rows_are_rejected(write, load):
    path = write(
        "patients.csv",
        "patient_id,first_name\n"
        "1,Old\n"  # line 2
        "2,Only\n"  # line 3
        "1,Newer\n"  # line 4
        "1,Newest\n",  # line 5
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    _, con = load()
    assert con.execute("select patient_id, first_name from raw.patients order by 1").fetchall() == [
        ("1", "Newest"),
        ("2", "Only"),
    ]
    assert con.execute(
        "select source_row, reason from raw.patients__rejected order by 1"
    ).fetchall() == [
        (2, f"duplicate patient_id '1': replaced by the later row at {path}:5"),
        (4, f"duplicate patient_id '1': replaced by the later row at {path}:5"),
    ]


def test_invalid_last_duplicate_still_wins_over_an_older_valid_row(write, load):
    write(
        "patients.csv",
        "patient_id,date_of_birth\n1,1990-01-01\n1,1990-02-31\n",
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    _, con = load()
    assert con.execute("select count(*) from raw.patients").fetchall() == [(0,)]
    reasons = [
        r[0]
        for r in con.execute(
            "select reason from raw.patients__rejected order by source_row"
        ).fetchall()
    ]
    assert reasons[0].startswith("duplicate patient_id '1'")
    assert reasons[1] == "date_of_birth '1990-02-31' is not a date (expected YYYY-MM-DD)"


def test_missing_required_column_fails_the_entity_with_one_clear_message(write, load):
    path = write("patients.csv", "patient_id\n1\n")
    write("appointments.csv", "appointment_id,patient_id\na1,1\n")
    with pytest.raises(ExtractFileError) as err:
        load()
    assert str(err.value) == (
        f"{path.parent / 'appointments.csv'}: required column 'starts_at' is missing "
        "(the header has: appointment_id, patient_id); add the column, or rename the column "
        "that holds it to the name the extract contract uses"
    )


def test_missing_optional_files_are_empty_entities_but_patients_is_required(write, load, tmp_path):
    write("patients.csv", "patient_id\n1\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    assert results["leads"].rows_in == 0 and results["leads"].source == ""
    assert con.execute("select count(*) from raw.leads").fetchall() == [(0,)]

    (tmp_path / "extract" / "patients.csv").unlink()
    with pytest.raises(ExtractFileError, match="patients.csv is missing"):
        load()


def test_duplicate_header_column_is_a_clear_error(write, load):
    write("patients.csv", "patient_id,email,Email\n1,a@b.co,c@d.co\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    with pytest.raises(ExtractFileError, match="column 'Email' appears twice in the header"):
        load()


def test_unterminated_quote_rejects_its_line_alone(write, load):
    write(
        "patients.csv",
        'patient_id,first_name\n1,Ann\n2,"Bo\n3,Cy\n',
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    # The quote opened on line 3 is never closed: that line is rejected on its own and
    # reading resumes on line 4, so patient 3 is loaded.
    loaded = con.execute("select patient_id, _source_row from raw.patients order by 1")
    assert loaded.fetchall() == [("1", 2), ("3", 4)]
    ((row, reason, record),) = con.execute(
        "select source_row, reason, record from raw.patients__rejected"
    ).fetchall()
    assert row == 3 and "never closed" in reason and record == '2,"Bo'
    assert results["patients"].rows_in == 3


def test_invalid_utf8_is_rejected_per_record(write, load):
    write("patients.csv", b"patient_id,first_name\n1,Ann\n2,Ren\xe9\n3,Cy\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    assert con.execute("select patient_id from raw.patients order by 1").fetchall() == [
        ("1",),
        ("3",),
    ]
    assert con.execute("select source_row, reason from raw.patients__rejected").fetchall() == [
        (3, "record is not valid UTF-8 text; re-export the file as UTF-8")
    ]
    assert results["patients"].rows_in == 3


def test_batches_give_the_same_result_as_one_pass(write, tmp_path):
    # Duplicates of id 1 sit in different batches of two rows: lines 2 and 6 (winner).
    import duckdb

    from ingest.load import load_entity

    path = write(
        "patients.csv",
        "patient_id,first_name,date_of_birth\n"
        "1,Old,1990-01-01\n"  # line 2, batch 1
        "2,Bo,bad\n"  # line 3, batch 1
        "3,Cy,\n"  # line 4, batch 2
        "4,Di,\n"  # line 5, batch 2
        "1,New,1990-01-01\n",  # line 6, batch 3
    )
    outcomes = []
    for batch_rows in (2, 1000):
        con = duckdb.connect()
        result = load_entity(con, "patients", path.parent, "csv", batch_rows=batch_rows)
        outcomes.append(
            (
                result.rows_in,
                con.execute(
                    "select patient_id, first_name, _source_row from raw.patients order by 1"
                ).fetchall(),
                con.execute(
                    "select source_row, reason from raw.patients__rejected order by 1"
                ).fetchall(),
                con.execute(
                    "select count(*) from information_schema.tables"
                    " where table_name like '__staging%' or table_name like '__loading%'"
                ).fetchall(),
            )
        )
        con.close()
    assert (
        outcomes[0]
        == outcomes[1]
        == (
            5,
            [("1", "New", 6), ("3", "Cy", 4), ("4", "Di", 5)],
            [
                (2, f"duplicate patient_id '1': replaced by the later row at {path}:6"),
                (3, "date_of_birth 'bad' is not a date (expected YYYY-MM-DD)"),
            ],
            [(0,)],  # the staging and loading tables are gone
        )
    )


@pytest.mark.parametrize("chunk", [1, 2, 3, 64])
def test_line_end_normalising_copy_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    from ingest import csv_reader

    monkeypatch.setattr(csv_reader, "_CHUNK", chunk)
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    # CRLF, a lone CR, LF, and a CR as the very last byte.
    source.write_bytes(b"a\r\nb\rc\nd\r")
    inner, shortened = csv_reader.copy_with_lf_line_ends(source, target)
    assert target.read_bytes() == b"a\nb\nc\nd\n"
    assert (inner.tolist(), shortened.tolist()) == ([], [1])  # 'a' CRLF: its LF lands at 1
    source.write_bytes(b"a\nb\n")
    inner, shortened = csv_reader.copy_with_lf_line_ends(source, target)
    assert (inner.tolist(), shortened.tolist()) == ([], [])
    assert target.read_bytes() == b"a\nb\n"
    # CRs inside quoted values: where their line breaks land in the copy is told.
    source.write_bytes(b'id,a\r\n1,"x\ry"\r2,"p\r\nq"\n')
    inner, shortened = csv_reader.copy_with_lf_line_ends(source, target)
    assert target.read_bytes() == b'id,a\n1,"x\ny"\n2,"p\nq"\n'
    # In the copy: 'id,a' LF (0-4), '1,"x' (5-8), the line break at 9; 'y"' LF (10-12),
    # '2,"p' (13-16), the line break at 17. The CRLFs were at 4 and 17.
    assert inner.tolist() == [9, 17] and shortened.tolist() == [4, 17]
