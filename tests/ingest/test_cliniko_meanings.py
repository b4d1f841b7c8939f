"""What a Cliniko endpoint says about its records holds whatever the records' own fields
say, and records that would change the meaning of others cannot be skipped quietly."""

from __future__ import annotations

import json

import pytest

from ingest.cliniko import custom_field_values, insurance_plan
from ingest.csv_reader import ExtractFileError

BASE = "https://api.au1.cliniko.com/v1"


def link(kind: str, ident: str) -> dict:
    return {"links": {"self": f"{BASE}/{kind}/{ident}"}}


def page(key: str, records: list, total: int | None = None, **extra) -> str:
    body = {key: records, "total_entries": len(records) if total is None else total,
            "links": {"self": "x"}, **extra}  # fmt: skip
    return json.dumps(body)


def appointment(ident: str, day: int, **extra) -> dict:
    return {"id": ident, "starts_at": f"2016-07-{day:02d}T03:45:00Z", "cancelled_at": None,
            "deleted_at": None, "patient": link("patients", "82"), **extra}  # fmt: skip


@pytest.fixture
def clinic(write):
    write("patients/page-00001.json", page("patients", [
        {"id": "82", "first_name": "Joe", "archived_at": ""},
        {"id": "7", "first_name": "Dee", "archived_at": ""},
    ]))  # fmt: skip
    write("individual_appointments/page-00001.json",
          page("individual_appointments", [appointment("1", 21)]))
    return write


def test_records_of_the_variant_endpoints_are_what_the_endpoint_says(clinic, load):
    # Each record here lacks the field that would say so itself.
    clinic("patients_archived/page-00001.json",
           page("patients", [{"id": "5", "first_name": "Petra", "archived_at": ""}]))
    clinic("patients_deleted/page-00001.json",
           page("patients", [{"links": {"self": f"{BASE}/patients/7"}}]))  # no deleted_at
    clinic("individual_appointments_cancelled/page-00001.json",
           page("individual_appointments", [appointment("11", 25, updated_at="2016-07-22T15:10:08Z")]))  # noqa: E501
    clinic("individual_appointments_deleted/page-00001.json",
           page("individual_appointments", [appointment("12", 28)]))  # deleted_at null
    _, con = load("cliniko")
    assert con.execute("select patient_id, status from raw.patients order by 1").fetchall() == [
        ("5", "archived"), ("82", "active"),
    ]  # 7 deleted, 5 archived by its endpoint
    rows = con.execute("select appointment_id, cancelled_at is not null from raw.appointments "
                       "order by 1").fetchall()  # fmt: skip
    assert rows == [("1", False), ("11", True)]  # 11 cancelled (at its update), 12 deleted
    deleted_page = clinic_path(con, "patients_deleted")
    reasons = sorted(r for (r,) in rejected(con, "patients"))
    assert reasons == [
        "deleted in the practice-management system at a time Cliniko did not give: not part "
        "of the clinic",
        f"duplicate patient_id '7': replaced by the later row at {deleted_page}:1",
    ]


def rejected(con, entity: str) -> list[tuple[str]]:
    return con.execute(f"select reason from raw.{entity}__rejected").fetchall()


def clinic_path(con, folder: str) -> str:
    files = con.execute("select source_file from raw.patients__rejected").fetchall()
    (path,) = {p for (p,) in files if f"/{folder}/" in p}
    return path


def test_a_deletion_that_cannot_be_read_refuses_the_pull(clinic, load):
    bad = clinic("patients_deleted/page-00001.json", page("patients", [
        {"deleted_at": "2016-07-30T09:00:00Z", "links": {"self": f"{BASE}/patients/7/"}},
    ]))  # fmt: skip
    with pytest.raises(ExtractFileError) as err:
        load("cliniko")
    assert f"{bad}: record 1 of patients/deleted cannot be read (id: the record has no id, " \
           "and its own link" in str(err.value)  # fmt: skip
    assert "a deleted record would stay in the clinic" in str(err.value)


def test_an_id_written_as_a_decimal_is_not_the_record_it_looks_like(clinic, load):
    clinic("patients/page-00001.json", page("patients", [{"id": "7.0", "first_name": "Dee"},
                                                         {"id": "82", "first_name": "Joe"}]))
    _, con = load("cliniko")
    assert con.execute("select reason from raw.patients__rejected").fetchall() == [
        ("id '7.0' is not a Cliniko record id",)
    ]


def test_an_invoice_without_a_status_is_rejected_not_read_as_owed(clinic, load):
    clinic("invoices/page-00001.json", page("invoices", [
        {"id": "109", "status": None, "total_amount": "80.0", "issue_date": "2016-07-01",
         "patient": link("patients", "82")},
        {"id": "111", "total_amount": "20.0", "issue_date": "2016-07-01",
         "patient": link("patients", "82")},
        {"id": "112", "status": "40", "total_amount": "20.0", "issue_date": "2016-07-01",
         "patient": link("patients", "82")},
    ]))  # fmt: skip
    clinic("invoices_deleted/page-00001.json", page("invoices", [
        {"id": "113", "total_amount": "50.0", "issue_date": "2016-07-14",
         "patient": link("patients", "82"), "deleted_at": None},
    ]))  # fmt: skip
    _, con = load("cliniko")
    assert con.execute("select invoice_id, status from raw.invoices order by 1").fetchall() == [
        ("112", "paid"), ("113", "void"),  # listed as deleted: void, whatever it says
    ]
    reasons = [r for (r,) in rejected(con, "invoices")]
    assert reasons == ["status is missing; Cliniko gives every invoice one of 10, 20, 30, 40"] * 2


def test_a_deleted_invoice_line_replaces_its_live_copy(clinic, load):
    item = {"id": "1", "name": "Initial consultation", "quantity": 1, "unit_price": "100.0",
            "invoice": link("invoices", "108")}  # fmt: skip
    clinic("invoice_items/page-00001.json", page("invoice_items", [
        item, {**item, "id": "2", "name": "Heat pack"}]))  # fmt: skip
    clinic("invoice_items_deleted/page-00001.json",
           page("invoice_items", [{**item, "deleted_at": "2016-07-06T01:00:00Z"}]))
    _, con = load("cliniko")
    assert con.execute("select item_name from raw.invoice_items").fetchall() == [("Heat pack",)]
    reasons = sorted(r for (r,) in rejected(con, "invoice_items"))
    assert reasons == [
        "deleted in the practice-management system at 2016-07-06T01:00:00Z (listed by "
        "invoice_items/deleted): not part of the clinic",
        "deleted in the practice-management system at 2016-07-06T01:00:00Z: not part of the "
        "clinic",
    ]


def test_pages_are_read_in_page_order_and_must_say_their_total(write, load):
    clinic = write
    write("individual_appointments/page-00001.json",
          page("individual_appointments", [appointment("1", 21)]))
    records = [{"id": str(n), "first_name": f"P{n}"} for n in range(1, 11)]
    for n, record in enumerate(records, start=1):
        # page-1.json ... page-10.json: by name, page-10 would come second.
        nxt = {"next": f"{BASE}/patients?page={n + 1}"} if n < 10 else {}
        clinic(f"patients/page-{n}.json", json.dumps({
            "patients": [record], "total_entries": 10,
            "links": {"self": f"{BASE}/patients?page={n}", **nxt}}))  # fmt: skip
    results, _ = load("cliniko")
    assert results["patients"].loaded == 10
    clinic("patients/page-11.json", json.dumps({"patients": [], "links": {}}))
    with pytest.raises(ExtractFileError, match="page-11.json has no total_entries"):
        load("cliniko")


def record_with_fields(*fields: dict, section: str = "Insurance coverage") -> dict:
    return {"custom_fields": {"sections": [{"name": section, "fields": list(fields)}]}}


@pytest.mark.parametrize(
    ("section", "field", "plan"),
    [
        ("Insurance coverage", {"name": "Provider", "value": "Bupa"}, "Bupa"),
        ("Recovery goals", {"name": "Main goal", "value": "Run a marathon"}, None),
        ("Discovery", {"name": "How did you hear about us", "value": "Google"}, None),
        ("Admin", {"name": "Coverage notes", "value": "call back"}, None),
        ("Insurance", {"name": "Do you have private health insurance?", "value": "Yes"}, None),
        ("Insurance", {"name": "Private cover", "value": "yes"}, None),
        ("Health fund", {"name": "Fund", "value": "HCF"}, "HCF"),
    ],
)
def test_the_insurer_is_only_read_from_a_field_that_names_one(section, field, plan):
    assert insurance_plan(record_with_fields(field, section=section)) == plan


def test_only_options_selected_with_true_are_selected():
    record = record_with_fields({"name": "Provider", "options": [
        {"name": "Great Insurance", "selected": "0"},
        {"name": "Other Insurance", "selected": "false"},
        {"name": "Super Insurance", "selected": True},
    ]})  # fmt: skip
    assert custom_field_values(record) == {"Insurance coverage / Provider": "Super Insurance"}
