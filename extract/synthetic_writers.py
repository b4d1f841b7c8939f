"""Writers for the synthetic clinic: canonical CSV files and Cliniko API page folders.

Generated frames hold contract columns (timestamps as UTC datetimes, money in integer
cents) plus a few `_`-prefixed columns that only the Cliniko pages use (phone numbers
other than the mobile, archive and deletion stamps, the invoice's numeric status).
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
    "cases": "patient_cases",
}
_ENTITY = {e.name: e for e in ENTITIES}



def canonical_csv_frame(frame: pl.DataFrame, spec: Entity) -> pl.DataFrame:
    """The contract's columns in contract order, money (held in cents) as decimal text."""
    columns = []
    for col in spec.columns:
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


def _cliniko_records(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    resource = CLINIKO_RESOURCES[name]
    if name == "patients":
        return frame.select(
            pl.col("patient_id").alias("id"),
            _text("first_name"), _text("last_name"), _day("date_of_birth"), _text("sex"),
            _text("email"),
            pl.concat_list([_phone("Mobile", "mobile"), _phone("Home", "_home_phone"),
                            _phone("Work", "_work_phone")])
            .list.drop_nulls().alias("patient_phone_numbers"),
            _text("address").alias("address_1"), pl.lit("").alias("address_2"),
            _text("city"), _text("state"), _text("post_code"), _text("country"),
            "latitude", "longitude", _text("referral_source"), _text("insurance_plan"),
            "accepted_email_marketing", "accepted_sms_marketing", "has_whatsapp",
            _text("status"), _stamp("_archived_at").alias("archived_at"),
            _stamp("created_at"), _stamp("created_at").alias("updated_at"),
            _link(resource, "patient_id").struct.field("links"),
        )
    if name == "practitioners":
        return frame.select(
            pl.col("practitioner_id").alias("id"), _text("first_name"), _text("last_name"),
            _text("designation"), "active", _stamp("left_at").alias("archived_at"),
            _link(resource, "practitioner_id").struct.field("links"),
        )
    if name == "locations":
        return frame.select(
            pl.col("location_id").alias("id"), pl.col("name").alias("business_name"),
            pl.col("_address").alias("address_1"), "city", "state", "post_code",
            pl.lit("Australia").alias("country"), "latitude", "longitude", "time_zone",
            _link(resource, "location_id").struct.field("links"),
        )
    if name == "appointment_types":
        return frame.select(
            pl.col("appointment_type_id").alias("id"), "name", "category",
            pl.col("duration_minutes").alias("duration_in_minutes"),
            _link(resource, "appointment_type_id").struct.field("links"),
        )
    if name == "appointments":
        return frame.select(
            pl.col("appointment_id").alias("id"), _stamp("starts_at"), _stamp("ends_at"),
            _stamp("created_at"), _stamp("created_at").alias("updated_at"),
            _stamp("cancelled_at"), "did_not_arrive", "patient_arrived",
            _link("patients", "patient_id").alias("patient"),
            _link("practitioners", "practitioner_id").alias("practitioner"),
            _link("appointment_types", "appointment_type_id").alias("appointment_type"),
            _link("businesses", "location_id").alias("business"),
            _link("patient_cases", "case_id").alias("patient_case"),
            _link(resource, "appointment_id").struct.field("links"),
        )
    if name == "invoices":
        return frame.select(
            pl.col("invoice_id").alias("id"),
            (pl.int_range(pl.len()) + 1).alias("number"),
            _day("issue_date"), pl.col("_cliniko_status").alias("status"),
            _money("total_amount"), _money("amount_paid"),
            _stamp("_deleted_at").alias("deleted_at"),
            _link("patients", "patient_id").alias("patient"),
            _link("individual_appointments", "appointment_id").alias("appointment"),
            _link("practitioners", "practitioner_id").alias("practitioner"),
            _link("patient_cases", "case_id").alias("patient_case"),
            _link(resource, "invoice_id").struct.field("links"),
        )
    if name == "cases":
        return frame.select(
            pl.col("case_id").alias("id"), "name", _day("issue_date"), _day("expiry_date"),
            "max_sessions", _money("max_invoiceable_amount"), "closed", _stamp("closed_at"),
            _text("referral_type"), pl.lit("").alias("notes"),
            _link("patients", "patient_id").alias("patient"),
            _link("contacts", "_contact_id").alias("contact"),
            _link(resource, "case_id").struct.field("links"),
        )
    raise KeyError(f"{name} has no Cliniko resource")


def _page_url(resource: str, page: int) -> str:
    return f"{CLINIKO_API}/{resource}?page={page}&per_page={PAGE_SIZE}"


def write_pages(folder: Path, resource: str, records: pl.DataFrame) -> None:
    """One `page-NNNNN.json` per 100 records, shaped as the Cliniko API returns them."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("page-*.json"):  # pages from an earlier, larger run
        stale.unlink()
    total = records.height
    pages = max(1, ceil(total / PAGE_SIZE))
    head = b'{"' + resource.encode() + b'":'
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

    def close(self) -> dict[str, int]:
        beside = tuple(n for n in self.parts if n not in CLINIKO_RESOURCES)
        csv = CsvSink(self.out_dir, beside)
        rows = {}
        for name, parts in self.parts.items():
            frame = pl.concat(parts) if parts else _empty(name)
            # Cliniko ids are JSON strings, never numbers.
            frame = frame.with_columns(pl.col(r"^_?.*_id$").cast(pl.String))
            rows[name] = frame.height
            if name in CLINIKO_RESOURCES:
                resource = CLINIKO_RESOURCES[name]
                write_pages(self.out_dir / resource, resource, _cliniko_records(name, frame))
            else:
                csv.write(name, frame)
        contacts = self.contacts.with_columns(pl.col("contact_id").cast(pl.String)).select(
            pl.col("contact_id").alias("id"), pl.lit("Dr").alias("title"), "first_name",
            "last_name", "company_name", _link("contacts", "contact_id").struct.field("links"),
        )
        write_pages(self.out_dir / "contacts", "contacts", contacts)
        csv.close()
        return rows
