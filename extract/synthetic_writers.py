"""Writers for the synthetic clinic: canonical CSV files and Cliniko API page folders.

Generated frames hold contract columns (timestamps as UTC datetimes, money in integer
cents) plus a few `_`-prefixed columns that only the Cliniko pages use (phone numbers
other than the mobile, archive and deletion stamps, the invoice's numeric status, the
referring doctor's contact). The Cliniko pages hold only what Cliniko's API documents, so
a Cliniko extract says less than the CSV one: no coordinates or WhatsApp flag, no amount
paid on an invoice (an open Cliniko invoice is owed in full).
"""

from __future__ import annotations

from math import ceil
from pathlib import Path
from typing import IO

import orjson
import polars as pl

from ingest.entities import ENTITIES, Entity, Kind

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DATE_FORMAT = "%Y-%m-%d"
CLINIKO_API = "https://api.au1.cliniko.com/v1"
PAGE_SIZE = 100
# Canonical entity -> Cliniko resource folder. The other entities have no Cliniko
# resource and are written as canonical CSV beside the folders.
CLINIKO_RESOURCES = {
    "patients": "patients",
    "practitioners": "practitioners",
    "locations": "businesses",
    "appointment_types": "appointment_types",
    "appointments": "individual_appointments",
    "invoices": "invoices",
    "invoice_items": "invoice_items",
    "cases": "patient_cases",
}
_ENTITY = {e.name: e for e in ENTITIES}



def canonical_csv_frame(frame: pl.DataFrame, spec: Entity) -> pl.DataFrame:
    """The contract's columns in contract order, money (held in cents) as decimal text."""
    columns = []
    for col in spec.columns:
        if col.name not in frame.columns:  # a contract column the generator leaves empty
            columns.append(pl.lit(None, dtype=pl.String).alias(col.name))
            continue
        expr = pl.col(col.name)
        if col.kind is Kind.MONEY:
            # Exact: whole cents scaled into a 2-decimal type, written as "50.00".
            expr = (expr.cast(pl.Decimal(18, 2)) / 100).cast(pl.Decimal(18, 2))
        columns.append(expr.alias(col.name))
    return frame.select(columns)


class CsvSink:
    """Appends each entity's chunks to `<entity>.csv`, header first."""

    def __init__(self, out_dir: Path, names: tuple[str, ...]) -> None:
        self._handles: dict[str, IO[bytes]] = {}
        self.out_dir = out_dir
        self.rows = dict.fromkeys(names, 0)

    def write(self, name: str, frame: pl.DataFrame) -> None:
        handle = self._handles.get(name)
        header = handle is None
        if handle is None:
            handle = self._handles[name] = open(self.out_dir / f"{name}.csv", "wb")  # noqa: SIM115
        canonical_csv_frame(frame, _ENTITY[name]).write_csv(
            handle, include_header=header, datetime_format=TIMESTAMP_FORMAT,
            date_format="%Y-%m-%d",
        )
        self.rows[name] += frame.height

    def close(self) -> dict[str, int]:
        for name in self.rows:
            if name not in self._handles:  # nothing generated: still a valid, empty file
                self.write(name, _empty(name))
        for handle in self._handles.values():
            handle.close()
        return dict(self.rows)


_ENTITY = {e.name: e for e in ENTITIES}


def _empty(name: str) -> pl.DataFrame:
    return pl.DataFrame({c.name: pl.Series([], dtype=pl.String) for c in _ENTITY[name].columns})




def _text(name: str) -> pl.Expr:
    """Cliniko writes "" where it means null."""
    return pl.col(name).fill_null("")


def _stamp(name: str) -> pl.Expr:
    return pl.col(name).dt.strftime(TIMESTAMP_FORMAT).fill_null("")


def _day(name: str) -> pl.Expr:
    return pl.col(name).dt.strftime(DATE_FORMAT).fill_null("")


def _money(name: str) -> pl.Expr:
    """Cents -> Cliniko's money strings ("50.0", "123.45")."""
    return (pl.col(name) / 100).cast(pl.String).fill_null("")


def _link(resource: str, id_column: str) -> pl.Expr:
    """{"links": {"self": ".../<resource>/<id>"}}, null when the id is null."""
    url = pl.concat_str([pl.lit(f"{CLINIKO_API}/{resource}/"), pl.col(id_column)])
    return pl.when(pl.col(id_column).is_not_null()).then(
        pl.struct(pl.struct(url.alias("self")).alias("links"))
    )


def _phone(kind: str, column: str) -> pl.Expr:
    return pl.when(pl.col(column).is_not_null()).then(
        pl.struct(pl.lit(kind).alias("phone_type"), pl.col(column).alias("number"))
    )


def _split(frame: pl.DataFrame, variant: pl.Expr, path: str, other: str) -> dict[str, pl.DataFrame]:
    """The records of an endpoint and of its variant (`patients` / `patients/archived`)."""
    marked = frame.with_columns(variant.fill_null(False).alias("_variant"))
    return {
        path: marked.filter(~pl.col("_variant")).drop("_variant"),
        other: marked.filter(pl.col("_variant")).drop("_variant"),
    }


def _custom_fields(plan: str) -> pl.Expr:
    """Cliniko's custom_fields, as a clinic keeps the health fund: one radio-button field
    ("Insurance coverage / Provider") with the patient's fund selected."""
    option = pl.struct(pl.col(plan).alias("name"), pl.lit(True).alias("selected"))
    fields = pl.struct(
        pl.lit("Provider").alias("name"), pl.lit("radiobuttons").alias("type"),
        pl.concat_list([option]).alias("options"),
    )  # fmt: skip
    section = pl.struct(pl.lit("Insurance coverage").alias("name"),
                        pl.concat_list([fields]).alias("fields"))  # fmt: skip
    return pl.when(pl.col(plan).is_not_null()).then(
        pl.struct(pl.concat_list([section]).alias("sections"))
    )


def _cliniko_records(name: str, frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Cliniko endpoint path → its records, for one generated entity. Only what Cliniko's
    API documents is written (no coordinates, WhatsApp flag or amount paid), and each
    variant goes to its own endpoint: archived patients, inactive practitioners, cancelled
    appointments, deleted invoices."""
    resource = CLINIKO_RESOURCES[name]
    if name == "patients":
        records = frame.select(
            pl.col("patient_id").alias("id"),
            _text("first_name"), _text("last_name"), _day("date_of_birth"), _text("sex"),
            _text("email"),
            pl.concat_list([_phone("Mobile", "mobile"), _phone("Home", "_home_phone"),
                            _phone("Work", "_work_phone")])
            .list.drop_nulls().alias("patient_phone_numbers"),
            _text("address").alias("address_1"), pl.lit("").alias("address_2"),
            _text("city"), _text("state"), _text("post_code"), _text("country"),
            _text("referral_source"), _custom_fields("insurance_plan").alias("custom_fields"),
            "accepted_email_marketing", "accepted_sms_marketing",
            _stamp("_archived_at").alias("archived_at"),
            _stamp("created_at"), _stamp("created_at").alias("updated_at"),
            pl.lit("").alias("deleted_at"),
            _link("contacts", "_contact_id").alias("referring_doctor"),
            _link(resource, "patient_id").struct.field("links"),
        )
        return _split(records, pl.col("archived_at") != "", "patients", "patients/archived")
    if name == "practitioners":
        records = frame.select(
            pl.col("practitioner_id").alias("id"), _text("first_name"), _text("last_name"),
            _text("designation"), pl.col("active"),
            _link(resource, "practitioner_id").struct.field("links"),
        )
        # Cliniko has no active field: an inactive practitioner is listed by its own endpoint.
        split = _split(records, ~pl.col("active"), "practitioners", "practitioners/inactive")
        return {path: part.drop("active") for path, part in split.items()}
    if name == "locations":
        return {"businesses": frame.select(
            pl.col("location_id").alias("id"), pl.col("name").alias("business_name"),
            pl.col("_address").alias("address_1"), "city", "state", "post_code",
            pl.lit("Australia").alias("country"),
            pl.col("time_zone").str.split("/").list.last().alias("time_zone"),
            pl.col("time_zone").alias("time_zone_identifier"),
            _link(resource, "location_id").struct.field("links"),
        )}  # fmt: skip
    if name == "appointment_types":
        return {"appointment_types": frame.select(
            pl.col("appointment_type_id").alias("id"), "name", "category",
            pl.col("duration_minutes").alias("duration_in_minutes"),
            _link(resource, "appointment_type_id").struct.field("links"),
        )}  # fmt: skip
    if name == "appointments":
        records = frame.select(
            pl.col("appointment_id").alias("id"), _stamp("starts_at"), _stamp("ends_at"),
            _stamp("created_at"), _stamp("created_at").alias("updated_at"),
            _stamp("cancelled_at"), "did_not_arrive", "patient_arrived",
            pl.lit(None, dtype=pl.String).alias("deleted_at"),
            _link("patients", "patient_id").alias("patient"),
            _link("practitioners", "practitioner_id").alias("practitioner"),
            _link("appointment_types", "appointment_type_id").alias("appointment_type"),
            _link("businesses", "location_id").alias("business"),
            _link(resource, "appointment_id").struct.field("links"),
        )
        # One attendee per individual appointment (same id as its booking); a case names
        # its sessions by these attendees' ids.
        attendees = frame.select(
            pl.col("appointment_id").alias("id"), _stamp("cancelled_at"),
            pl.col("patient_arrived").alias("arrived"),
            _link("bookings", "appointment_id").alias("booking"),
            _link("patients", "patient_id").alias("patient"),
            _link("attendees", "appointment_id").struct.field("links"),
        )
        cancelled = pl.col("cancelled_at") != ""
        return {
            **_split(records, cancelled, resource, f"{resource}/cancelled"),
            **_split(attendees, cancelled, "attendees", "attendees/cancelled"),
        }
    if name == "invoices":
        records = frame.select(
            pl.col("invoice_id").alias("id"),
            (pl.int_range(pl.len()) + 1).alias("number"),
            _day("issue_date"), pl.col("_cliniko_status").alias("status"),
            _money("total_amount"),
            _stamp("_deleted_at").alias("deleted_at"),
            _link("patients", "patient_id").alias("patient"),
            _link("individual_appointments", "appointment_id").alias("appointment"),
            _link("practitioners", "practitioner_id").alias("practitioner"),
            _link("patient_cases", "case_id").alias("patient_case"),
            _link(resource, "invoice_id").struct.field("links"),
        )
        return _split(records, pl.col("deleted_at") != "", "invoices", "invoices/deleted")
    if name == "invoice_items":
        return {"invoice_items": frame.with_row_index("_n", offset=1).select(
            pl.col("_n").cast(pl.String).alias("id"), pl.col("item_name").alias("name"),
            pl.col("quantity"), _money("unit_price"), pl.lit(None, dtype=pl.String)
            .alias("deleted_at"),
            _link("invoices", "invoice_id").alias("invoice"),
            _link(resource, "_n").struct.field("links"),
        )}  # fmt: skip
    if name == "cases":
        return {"patient_cases": frame.select(
            pl.col("case_id").alias("id"), "name", _day("issue_date"), _day("expiry_date"),
            "max_sessions", _money("max_invoiceable_amount"), "closed",
            pl.lit(None, dtype=pl.Boolean).alias("include_cancelled_attendees"),
            pl.lit(None, dtype=pl.Boolean).alias("include_dna_attendees"),
            _text("referral_type"), pl.lit("").alias("notes"), "attendee_ids",
            _link("patients", "patient_id").alias("patient"),
            _link("contacts", "_contact_id").alias("contact"),
            _link(resource, "case_id").struct.field("links"),
        )}  # fmt: skip
    raise KeyError(f"{name} has no Cliniko resource")


def _page_url(resource: str, page: int) -> str:
    return f"{CLINIKO_API}/{resource}?page={page}&per_page={PAGE_SIZE}"


def write_pages(folder: Path, resource: str, records: pl.DataFrame) -> None:
    """One `page-NNNNN.json` per 100 records, shaped as the Cliniko API returns them
    (`resource` is the endpoint's path, e.g. `patients/archived`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("page-*.json"):  # pages from an earlier, larger run
        stale.unlink()
    total = records.height
    pages = max(1, ceil(total / PAGE_SIZE))
    head = b'{"' + resource.split("/")[0].encode() + b'":'
    tail = b',"total_entries":' + str(total).encode() + b',"links":'
    for page in range(1, pages + 1):
        links = {"self": _page_url(resource, page)}
        if page > 1:
            links["previous"] = _page_url(resource, page - 1)
        if page < pages:
            links["next"] = _page_url(resource, page + 1)
        body = records.slice((page - 1) * PAGE_SIZE, PAGE_SIZE).write_json().encode()
        (folder / f"page-{page:05d}.json").write_bytes(
            head + body + tail + orjson.dumps(links) + b"}"
        )


class ClinikoSink:
    """Collects the generated frames, then writes Cliniko pages (moderate sizes only)."""

    def __init__(self, out_dir: Path, names: tuple[str, ...], contacts: pl.DataFrame) -> None:
        self.out_dir = out_dir
        self.contacts = contacts
        self.parts: dict[str, list[pl.DataFrame]] = {name: [] for name in names}

    def write(self, name: str, frame: pl.DataFrame) -> None:
        self.parts[name].append(frame)

    def _attendee_ids(self) -> pl.DataFrame:
        """case id → the ids of its sessions' attendees (an attendee shares its
        appointment's id), as Cliniko's patient cases list them."""
        appointments = pl.concat(self.parts["appointments"]) if self.parts["appointments"] else (
            _empty("appointments"))  # fmt: skip
        return (
            appointments.select(pl.col("case_id").cast(pl.String),
                                pl.col("appointment_id").cast(pl.String))  # fmt: skip
            .drop_nulls("case_id")
            .group_by("case_id", maintain_order=True)
            .agg(pl.col("appointment_id").alias("attendee_ids"))
        )

    def close(self) -> dict[str, int]:
        beside = tuple(n for n in self.parts if n not in CLINIKO_RESOURCES)
        csv = CsvSink(self.out_dir, beside)
        rows = {}
        for name, parts in self.parts.items():
            frame = pl.concat(parts) if parts else _empty(name)
            # Cliniko ids are JSON strings, never numbers.
            frame = frame.with_columns(pl.col(r"^_?.*_id$").cast(pl.String))
            rows[name] = frame.height
            if name == "cases":
                frame = frame.join(self._attendee_ids(), on="case_id", how="left")
            if name in CLINIKO_RESOURCES:
                for path, records in _cliniko_records(name, frame).items():
                    write_pages(self.out_dir / path.replace("/", "_"), path, records)
            else:
                csv.write(name, frame)
        contacts = self.contacts.with_columns(pl.col("contact_id").cast(pl.String)).select(
            pl.col("contact_id").alias("id"), pl.lit("Dr").alias("title"), "first_name",
            "last_name", "company_name", _link("contacts", "contact_id").struct.field("links"),
        )
        write_pages(self.out_dir / "contacts", "contacts", contacts)
        csv.close()
        return rows
