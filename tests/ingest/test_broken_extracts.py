"""Broken extracts lose nothing: each case was found by breaking a real-looking file."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from ingest.csv_reader import ExtractFileError
from ingest.inputs import count_csv_records, csv_record_lines
from ingest.load import load_entity

APPOINTMENTS_HEADER = "appointment_id,patient_id,starts_at\n"


def patients_lines(count: int) -> list[str]:
    """A header and `count` well-formed patients: patient i on line i + 1."""
    return ["patient_id,first_name,last_name,email"] + [
        f"{i},First{i},Last{i},p{i}@example.com" for i in range(1, count + 1)
    ]


def loaded_ids(con) -> list[int]:
    return sorted(int(r[0]) for r in con.execute("select patient_id from raw.patients").fetchall())


@pytest.mark.parametrize("later_quoted_value", [False, True])
def test_one_unterminated_quote_rejects_its_line_and_keeps_the_other_298(
    write, load, later_quoted_value
):
    lines = patients_lines(299)  # 300 lines
    lines[21] = '21,"Mia,Chen,m@example.com'  # line 22: the quote is never closed
    if later_quoted_value:
        # A properly quoted value further down, whose quote the stray one would pair with.
        lines[40] = '40,"Bo, Jo",Last40,p40@example.com'
    path = write("patients.csv", "\n".join(lines) + "\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()

    assert loaded_ids(con) == [i for i in range(1, 300) if i != 21]
    assert con.execute("select source_row, record from raw.patients__rejected").fetchall() == [
        (22, '21,"Mia,Chen,m@example.com')
    ]
    (reason,) = con.execute("select reason from raw.patients__rejected").fetchone()
    assert "never closed" in reason and "resumed on the next line" in reason
    if later_quoted_value:
        assert con.execute(
            "select first_name, _source_row from raw.patients where patient_id = '40'"
        ).fetchall() == [("Bo, Jo", 41)]
    patients = results["patients"]
    assert (patients.rows_in, patients.loaded, patients.rejected) == (299, 298, 1)
    # The independent count (Python's csv module, line by line) finds the same 299 records.
    assert count_csv_records(path) == 299


def test_a_3mb_value_is_loaded_and_rejected_records_keep_their_full_text(write, load):
    address = "x" * 3_000_000
    write(
        "patients.csv",
        "patient_id,first_name,address\n"
        f'1,Ann,"{address}"\n'
        f"2,Bo,{address},one field too many\n"
        "3,Cy,short\n",
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    _, con = load()
    assert con.execute(
        "select patient_id, length(address) from raw.patients order by 1"
    ).fetchall() == [("1", 3_000_000), ("3", 5)]
    ((row, reason, record),) = con.execute(
        "select source_row, reason, record from raw.patients__rejected"
    ).fetchall()
    assert row == 3 and reason.startswith("record has more fields than the header")
    assert record == f"2,Bo,{address},one field too many"


def test_undecodable_bytes_stay_in_the_rejected_record(write, load):
    write("patients.csv", b"patient_id,first_name\n1,Ren\xe9\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    _, con = load()
    assert con.execute("select record from raw.patients__rejected").fetchall() == [("1,Ren\\xe9",)]


def test_an_empty_export_loads_as_empty_tables_at_this_level(write, load):
    # Refusing a failed export is the pipeline's job (tests/orchestration/test_extract_guard);
    # the loader itself reads what it is given.
    write("patients.csv", "patient_id,first_name\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, _ = load()
    assert results["patients"].rows_in == 0


def test_money_with_more_than_two_decimals_is_rejected_not_rounded(write, load):
    write("patients.csv", "patient_id\np1\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    write(
        "invoices.csv",
        "invoice_id,patient_id,issue_date,total_amount\n"
        "i1,p1,2026-01-05,1200.505\n"
        "i2,p1,2026-01-05,0.001\n"
        "i3,p1,2026-01-05,1200.500\n"  # the same amount to the cent: kept
        "i4,p1,2026-01-05,99.9\n",
    )
    _, con = load()
    assert con.execute(
        "select invoice_id, total_amount from raw.invoices order by 1"
    ).fetchall() == [("i3", Decimal("1200.50")), ("i4", Decimal("99.90"))]
    reasons = dict(
        con.execute(
            "select json_extract_string(record, '$.invoice_id'), reason from raw.invoices__rejected"
        ).fetchall()
    )
    assert reasons["i1"].startswith("total_amount '1200.505' has more than two decimal places")
    assert reasons["i2"].startswith("total_amount '0.001' has more than two decimal places")


def test_a_leap_second_is_rejected_not_moved_to_the_next_minute(write, load):
    write("patients.csv", "patient_id\np1\n")
    write(
        "appointments.csv",
        APPOINTMENTS_HEADER
        + "a1,p1,2026-03-02T09:30:60Z\n"
        + "a2,p1,2026-03-02 09:30:60+10:00\n"
        + "a3,p1,2026-03-02T09:30:59Z\n",
    )
    _, con = load()
    assert con.execute("select appointment_id, starts_at from raw.appointments").fetchall() == [
        ("a3", datetime(2026, 3, 2, 9, 30, 59, tzinfo=UTC))
    ]
    reasons = [
        r[0]
        for r in con.execute(
            "select reason from raw.appointments__rejected order by source_row"
        ).fetchall()
    ]
    assert reasons == [
        "starts_at '2026-03-02T09:30:60Z' has 60 seconds, which would become the next minute; "
        "write :59 or :00",
        "starts_at '2026-03-02 09:30:60+10:00' has 60 seconds, which would become the next "
        "minute; write :59 or :00",
    ]


def test_implausible_dates_of_birth_quantities_and_amounts_are_rejected(write, tmp_path):
    folder = write("patients.csv", "").parent
    (folder / "patients.csv").write_text(
        "patient_id,date_of_birth\n"
        "p1,9999-12-31\n"
        "p2,0001-01-01\n"
        "p3,2026-12-02\n"  # the day after the as-of date
        "p4,2026-12-01\n"  # born on the as-of date: possible
        "p5,1950-06-15\n"
    )
    (folder / "invoice_items.csv").write_text(
        "invoice_id,item_name,quantity,unit_price\n"
        "i1,Consult,-1,80\n"
        "i1,Consult,1e9,80\n"
        "i1,Consult,2,80\n"
    )
    (folder / "cases.csv").write_text(
        "case_id,patient_id,name,max_invoiceable_amount\nc1,p5,EPC,-5\nc2,p5,EPC,500\n"
    )
    con = duckdb.connect()
    as_of = date(2026, 12, 1)
    for name in ("patients", "invoice_items", "cases"):
        load_entity(con, name, folder, as_of=as_of)
    assert [
        r[0] for r in con.execute("select patient_id from raw.patients order by 1").fetchall()
    ] == [
        "p4",
        "p5",
    ]
    assert [
        r[0] for r in con.execute("select reason from raw.patients__rejected order by 1").fetchall()
    ] == [
        "date_of_birth '0001-01-01' is before 1900-01-01, which no real record has "
        "(a placeholder?)",
        "date_of_birth '2026-12-02' is after the as-of date 2026-12-01; it cannot be in the future",
        "date_of_birth '9999-12-31' is after the as-of date 2026-12-01; it cannot be in the future",
    ]
    assert con.execute("select quantity from raw.invoice_items").fetchall() == [(2.0,)]
    assert sorted(
        r[0] for r in con.execute("select reason from raw.invoice_items__rejected").fetchall()
    ) == [
        "quantity -1.0 is outside the allowed range (0, 10000)",
        "quantity 1000000000.0 is outside the allowed range (0, 10000)",
    ]
    assert con.execute("select case_id from raw.cases").fetchall() == [("c2",)]
    assert con.execute("select reason from raw.cases__rejected").fetchall() == [
        ("max_invoiceable_amount -5.00 is below the allowed minimum 0",)
    ]


@pytest.mark.parametrize(
    ("content", "sign"),
    [
        ("patient_id,first_name\n1,Ann\n".encode("utf-16-le"), "NUL bytes"),
        ("patient_id,first_name\n1,Ann\n".encode("utf-16"), "byte-order mark"),
    ],
)
def test_utf16_is_named_as_the_problem_not_a_missing_column(write, load, content, sign):
    path = write("patients.csv", content)
    write("appointments.csv", APPOINTMENTS_HEADER)
    with pytest.raises(ExtractFileError) as err:
        load()
    assert str(err.value).startswith(f"{path}: the file looks like UTF-16 text")
    assert sign in str(err.value) and "re-export it as UTF-8" in str(err.value)


def cliniko_page(resource: str, records: list) -> str:
    return json.dumps({resource: records, "total_entries": len(records), "links": {}})


def test_cliniko_links_without_an_id_are_rejected_and_queries_are_not_part_of_the_id(write, load):
    base = "https://api.au1.cliniko.com/v1"
    write("patients/page-00001.json", cliniko_page("patients", [{"id": "5"}, {"id": "6"}]))
    write(
        "individual_appointments/page-00001.json",
        cliniko_page(
            "individual_appointments",
            [
                {
                    "id": "a1",
                    "starts_at": "2026-01-05T09:00:00Z",
                    "patient": {"links": {"self": f"{base}/patients/"}},
                },
                {
                    "id": "a2",
                    "starts_at": "2026-01-05T09:00:00Z",
                    "patient": {"links": {"self": f"{base}/patients/5?x=1"}},
                },
                {
                    "id": "a3",
                    "starts_at": "2026-01-05T09:00:00Z",
                    "patient": {"links": {"self": f"{base}/patients"}},
                },
                {
                    "id": "a4",
                    "starts_at": "2026-01-05T09:00:00Z",
                    "patient": {"links": {"self": f"{base}/patients/6#top"}},
                },
            ],
        ),  # fmt: skip
    )
    _, con = load("cliniko")
    assert con.execute(
        "select appointment_id, patient_id from raw.appointments order by 1"
    ).fetchall() == [("a2", "5"), ("a4", "6")]
    rejected = con.execute(
        "select source_row, reason from raw.appointments__rejected order by 1"
    ).fetchall()
    assert rejected == [
        (1, f"patient link '{base}/patients/' names no record (nothing after the resource)"),
        (3, f"patient link '{base}/patients' names no record (nothing after the resource)"),
    ]


def test_record_lines_of_the_independent_count_follow_quoted_line_breaks(tmp_path):
    path = tmp_path / "patients.csv"
    path.write_text('patient_id,address\n1,"a\nb"\n\n2,"c\n3,x\n')
    # Record 1 spans lines 2-3; line 4 is blank; line 5 never closes its quote, so line 6
    # starts the next record.
    assert list(csv_record_lines(Path(path))) == [2, 5, 6]


def test_cliniko_records_that_cannot_be_read_are_rejected_alone(write, load):
    base = "https://api.au1.cliniko.com/v1"
    write(
        "patients/page-00001.json",
        cliniko_page("patients", [
            {"id": "1", "patient_phone_numbers": True},
            {"id": "2", "patient_phone_numbers": [{"phone_type": "Mobile", "number": "0412"}]},
        ]),
    )  # fmt: skip
    appointments = [
        {"id": "a1", "starts_at": "2026-01-05T09:00:00Z", "patient": {"links": "x"}},
        {"id": "a2", "starts_at": "2026-01-05T09:00:00Z", "patient": {"links": ["x"]}},
        {"id": "a3", "starts_at": "2026-01-05T09:00:00Z",
         "patient": {"links": {"self": f"{base}/practitioners/7"}}},
        {"id": "a4", "starts_at": "2026-01-05T09:00:00Z",
         "patient": {"links": {"self": f"{base}/patients/.."}}},
        {"id": "a5", "starts_at": "2026-01-05T09:00:00Z",
         "patient": {"links": {"self": f"{base}/patients/2"}}},
    ]  # fmt: skip
    write("individual_appointments/page-00001.json",
          cliniko_page("individual_appointments", appointments))  # fmt: skip
    _, con = load("cliniko")
    assert con.execute("select patient_id, mobile from raw.patients").fetchall() == [("2", "0412")]
    assert con.execute("select source_row, reason from raw.patients__rejected").fetchall() == [
        (1, "patient_phone_numbers 'true' is not a list of phone numbers")
    ]
    assert con.execute("select appointment_id from raw.appointments").fetchall() == [("a5",)]
    rows = con.execute("select reason from raw.appointments__rejected order by source_row")
    reasons = [r[0] for r in rows.fetchall()]
    assert reasons == [
        'patient \'{"links":"x"}\' is not a Cliniko link ({\'links\': {\'self\': URL}})',
        'patient \'{"links":["x"]}\' is not a Cliniko link ({\'links\': {\'self\': URL}})',
        f"patient link '{base}/practitioners/7' points to practitioners, not to patients",
        f"patient link '{base}/patients/..' ends in '..', which is not a record id",
    ]


def test_a_cliniko_page_nested_too_deeply_is_a_clear_error(write, load):
    write("patients/page-00001.json", '{"patients": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write("individual_appointments/page-00001.json", cliniko_page("individual_appointments", []))
    with pytest.raises(ExtractFileError, match="nested too deeply to be a Cliniko page"):
        load("cliniko")


def test_amounts_too_large_or_oddly_signed_are_not_called_too_precise(write, load):
    write("patients.csv", "patient_id\np1\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    write(
        "invoices.csv",
        "invoice_id,patient_id,issue_date,total_amount\n"
        "i1,p1,2026-01-05,99999999999999999.99\n"  # 17 digits: more than DECIMAL(18, 2) holds
        "i2,p1,2026-01-05,-$-5\n"
        "i3,p1,2026-01-05,-$5\n"
        "i4,p1,2026-01-05,$-5\n",
    )
    _, con = load()
    assert con.execute(
        "select invoice_id, total_amount from raw.invoices order by 1"
    ).fetchall() == [("i3", Decimal("-5.00")), ("i4", Decimal("-5.00"))]
    reasons = [r[0] for r in con.execute(
        "select reason from raw.invoices__rejected order by source_row").fetchall()]  # fmt: skip
    assert reasons == [
        "total_amount '99999999999999999.99' is not an amount (expected a decimal such as "
        "120.50)",
        "total_amount '-$-5' is not an amount (expected a decimal such as 120.50)",
    ]


def test_a_time_finer_than_a_microsecond_is_rejected_not_cut(write, load):
    write("patients.csv", "patient_id\np1\n")
    write(
        "appointments.csv",
        APPOINTMENTS_HEADER
        + "a1,p1,2026-03-02T09:30:00.123456789Z\n"
        + "a2,p1,2026-03-02T09:30:00.123456000Z\n",  # the same time to the microsecond: kept
    )
    _, con = load()
    assert con.execute("select appointment_id, starts_at from raw.appointments").fetchall() == [
        ("a2", datetime(2026, 3, 2, 9, 30, 0, 123456, tzinfo=UTC))
    ]
    assert con.execute("select reason from raw.appointments__rejected").fetchall() == [
        ("starts_at '2026-03-02T09:30:00.123456789Z' is finer than a microsecond, which the "
         "warehouse keeps; it would be cut off: round it in the export",)
    ]  # fmt: skip


def test_a_stray_nul_byte_is_not_mistaken_for_utf16(write, load):
    write("patients.csv", b"patient_id,first_name\n1,Ann\n2,B\x00o\n3,Cy\n")
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, _ = load()
    assert results["patients"].rows_in == 3


def test_a_carriage_return_inside_a_value_of_a_mixed_file_is_not_changed(write, load):
    # Line ends mixed (CRLF and LF): the file is read with every line end made LF, which
    # would turn the CR inside patient 2's quoted name into LF. That record is rejected.
    write(
        "patients.csv",
        b'patient_id,first_name\r\n1,Ann\n2,"Bo\rJo"\r\n3,Cy\n',
    )
    write("appointments.csv", APPOINTMENTS_HEADER)
    results, con = load()
    assert con.execute("select patient_id, first_name from raw.patients order by 1").fetchall() == [
        ("1", "Ann"),
        ("3", "Cy"),
    ]
    ((row, reason, record),) = con.execute(
        "select source_row, reason, record from raw.patients__rejected"
    ).fetchall()
    assert row == 3 and reason.startswith("record has a carriage return inside a quoted value")
    assert record == '2,"Bo\rJo"'  # its text exactly as in the file
    assert results["patients"].rows_in == 3


BASIC = {
    "patients.csv": "patient_id,first_name\np1,Ann\np2,Bo\n",
    "appointments.csv": "appointment_id,patient_id,starts_at\na1,p1,2026-01-01T00:00:00Z\n",
}


@pytest.mark.parametrize("name", ["Opt_Outs.csv", "opt-outs.csv", "optouts.csv", "OPT_OUTS.CSV"])
def test_a_misnamed_opt_out_file_is_an_error_not_an_absent_entity(write, load, name):
    for file, text in BASIC.items():
        write(file, text)
    misnamed = write(name, "patient_id,channel\np1,all\n")
    with pytest.raises(ExtractFileError) as err:
        load("csv")
    assert str(err.value) == (
        f"{misnamed}: extract files are named exactly as their entity; is this opt_outs.csv? "
        "Rename it (a file under another name is not read)"
    )


def test_an_entity_file_that_is_a_folder_or_a_dangling_link_is_an_error(write, load, tmp_path):
    for file, text in BASIC.items():
        write(file, text)
    (tmp_path / "extract" / "opt_outs.csv").mkdir()
    (tmp_path / "extract" / "leads.csv").symlink_to(tmp_path / "nowhere.csv")
    with pytest.raises(ExtractFileError) as err:
        load("csv")
    lines = str(err.value).splitlines()
    assert lines == [
        f"{tmp_path / 'extract' / 'leads.csv'}: leads.csv is not a file (a folder, or a link "
        "to nothing); put the leads extract there as a CSV file",
        f"{tmp_path / 'extract' / 'opt_outs.csv'}: opt_outs.csv is not a file (a folder, or a "
        "link to nothing); put the opt_outs extract there as a CSV file",
    ]


def test_other_files_beside_the_entity_files_are_left_alone(write, load):
    for file, text in BASIC.items():
        write(file, text)
    write("patients_old.csv", "whatever\n")  # patients.csv is there: not a misnamed one
    write("notes.txt", "hello")
    results, _ = load("csv")
    assert results["patients"].loaded == 2


@pytest.mark.parametrize("column", ["_source_file", "_source_row", "_row_number", "_index",
                                    "_reason", "winner_file", "winner_row", "reason"])
def test_an_extra_column_named_like_ingest_bookkeeping_is_refused(write, load, column):
    write("patients.csv", f"patient_id,first_name,{column}\np1,Ann,x\n")
    write("appointments.csv", BASIC["appointments.csv"])
    with pytest.raises(ExtractFileError) as err:
        load("csv")
    assert f"column 3 of the header, '{column}', is a name ingest uses for its own " \
           "bookkeeping" in str(err.value)  # fmt: skip


def test_side_tables_a_killed_load_left_behind_are_dropped(write, load, tmp_path):
    for file, text in BASIC.items():
        write(file, text)
    import duckdb as db

    con = db.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("create schema raw")
    con.execute("create table raw.__loading_patients (x int)")
    con.execute("create table raw.__loading_leads__rejected (x int)")
    con.close()
    _, con = load("csv")
    left = con.execute("select table_name from information_schema.tables "
                       "where starts_with(table_name, '__loading_')").fetchall()  # fmt: skip
    assert left == []
