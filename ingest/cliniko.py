"""Cliniko API pages → the canonical raw entities (docs/extract-formats.md).

The pages are JSON as the API returns them. Numbers are read as text (ids can be
19-digit integers that a float would corrupt; money arrives as strings anyway), link
objects become the id at the end of their URL, and `""` becomes null. The result is the
same text frame the CSV reader produces, so parsing and validation are shared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl

from ingest.csv_reader import ExtractFileError
from ingest.entities import SOURCE_FILE, SOURCE_ROW, Entity
from ingest.parse import REJECTED_SCHEMA

Record = dict[str, Any]


@dataclass(frozen=True)
class BadValue:
    """A field that cannot be read as what Cliniko documents: the record is rejected."""

    reason: str


Getter = Callable[[Record], "str | None | BadValue"]

# Cliniko invoice status codes (docs/extract-formats.md).
INVOICE_STATUS = {"10": "open", "20": "paid", "30": "closed", "40": "open"}


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    value = str(value)
    return value if value.strip() != "" else None


_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def link_id(value: Any, resource: str | tuple[str, ...] | None = None) -> str | None | BadValue:
    """`{"links": {"self": ".../patients/82"}}` → `"82"`; plain ids pass through.

    The id is the last segment of the URL's path (a query string or fragment is not part of
    it), and the segment before it must be the resource the field links to. A link that
    names no record (`.../patients/`), one to another resource (`.../practitioners/7` for a
    patient), or one whose id is not an id (`..`) is a BadValue: the record is rejected
    rather than linked to a wrong one.
    """
    if not isinstance(value, dict):
        return text(value)
    links = value.get("links")
    if links is None:
        return None
    if not isinstance(links, dict) or not isinstance(links.get("self"), str | None):
        return BadValue(f"{text(value)!r} is not a Cliniko link ({{'links': {{'self': URL}}}})")
    url = links.get("self")
    if url is None or not url.strip():
        return None
    segments = urlsplit(url.strip()).path.split("/")
    ident = segments[-1]
    names = (resource,) if isinstance(resource, str) else resource
    if not ident or (names is not None and ident in names):
        return BadValue(f"link {url!r} names no record (nothing after the resource)")
    if names is not None and (len(segments) < 2 or segments[-2] not in names):
        return BadValue(f"link {url!r} points to {segments[-2] if len(segments) > 1 else '?'}, "
                        f"not to {' or '.join(names)}")  # fmt: skip
    if not _ID.match(ident):
        return BadValue(f"link {url!r} ends in {ident!r}, which is not a record id")
    return ident


def field(name: str, *fallbacks: str) -> Getter:
    def get(record: Record) -> str | None:
        for key in (name, *fallbacks):
            value = text(record.get(key))
            if value is not None:
                return value
        return None

    return get


def link(name: str, resource: str | tuple[str, ...] | None = None) -> Getter:
    def get(record: Record) -> str | None | BadValue:
        found = link_id(record.get(name), resource)
        if isinstance(found, BadValue):
            return BadValue(f"{name} {found.reason}")
        return found

    return get


def mobile(record: Record) -> str | None | BadValue:
    phones = record.get("patient_phone_numbers") or []
    if not isinstance(phones, list):
        return BadValue(f"patient_phone_numbers {text(phones)!r} is not a list of phone numbers")
    for phone in phones:
        if isinstance(phone, dict) and str(phone.get("phone_type", "")).lower() == "mobile":
            return text(phone.get("number"))
    return None


def address(record: Record) -> str | None:
    parts = [text(record.get(k)) for k in ("address_1", "address_2", "address_3")]
    joined = ", ".join(p for p in parts if p)
    return joined or None


def patient_status(record: Record) -> str | None:
    explicit = text(record.get("status"))
    if explicit is not None:
        return explicit
    return "archived" if text(record.get("archived_at")) else "active"


def invoice_status(record: Record) -> str | None:
    if text(record.get("deleted_at")):
        return "void"
    raw = text(record.get("status"))
    # An unknown code stays as it is, so validation rejects the row and names the value.
    return INVOICE_STATUS.get(raw, raw) if raw is not None else None


def contact_name(contacts: dict[str, str]) -> Getter:
    def get(record: Record) -> str | None | BadValue:
        contact = link_id(record.get("contact"), "contacts")
        if isinstance(contact, BadValue):
            return BadValue(f"contact {contact.reason}")
        if contact is None:
            return field("referring_provider")(record)
        return contacts.get(contact, contact)

    return get


def mappings(contacts: dict[str, str]) -> dict[str, tuple[str, dict[str, Getter]]]:
    """entity → (resource folder, canonical column → getter)."""
    return {
        "patients": (
            "patients",
            {
                "patient_id": field("id"),
                "first_name": field("first_name"),
                "last_name": field("last_name"),
                "date_of_birth": field("date_of_birth"),
                "sex": field("sex", "gender"),
                "email": field("email"),
                "mobile": mobile,
                "has_whatsapp": field("has_whatsapp"),
                "address": address,
                "city": field("city"),
                "state": field("state"),
                "post_code": field("post_code"),
                "country": field("country"),
                "latitude": field("latitude"),
                "longitude": field("longitude"),
                "referral_source": field("referral_source"),
                "referring_provider": field("referring_provider"),
                "insurance_plan": field("insurance_plan"),
                "status": patient_status,
                "accepted_email_marketing": field("accepted_email_marketing"),
                "accepted_sms_marketing": field("accepted_sms_marketing"),
                "created_at": field("created_at"),
            },
        ),
        "practitioners": (
            "practitioners",
            {
                "practitioner_id": field("id"),
                "first_name": field("first_name"),
                "last_name": field("last_name"),
                "designation": field("designation"),
                "active": field("active"),
                "left_at": field("left_at", "archived_at"),
            },
        ),
        "locations": (
            "businesses",
            {
                "location_id": field("id"),
                "name": field("business_name", "name"),
                "city": field("city"),
                "state": field("state"),
                "post_code": field("post_code"),
                "latitude": field("latitude"),
                "longitude": field("longitude"),
                "time_zone": field("time_zone", "time_zone_identifier"),
            },
        ),
        "appointment_types": (
            "appointment_types",
            {
                "appointment_type_id": field("id"),
                "name": field("name"),
                "category": field("category"),
                "duration_minutes": field("duration_in_minutes", "duration_minutes"),
            },
        ),
        "appointments": (
            "individual_appointments",
            {
                "appointment_id": field("id"),
                "patient_id": link("patient", "patients"),
                "starts_at": field("starts_at"),
                "appointment_type_id": link("appointment_type", "appointment_types"),
                "practitioner_id": link("practitioner", "practitioners"),
                "location_id": link("business", "businesses"),
                "case_id": link("patient_case", "patient_cases"),
                "ends_at": field("ends_at"),
                "created_at": field("created_at"),
                "cancelled_at": field("cancelled_at"),
                "did_not_arrive": field("did_not_arrive"),
                "patient_arrived": field("patient_arrived"),
            },
        ),
        "invoices": (
            "invoices",
            {
                "invoice_id": field("id"),
                "patient_id": link("patient", "patients"),
                "issue_date": field("issue_date"),
                "total_amount": field("total_amount"),
                "status": invoice_status,
                "amount_paid": field("amount_paid"),
                "appointment_id": link("appointment", ("appointments", "individual_appointments")),
                "case_id": link("patient_case", "patient_cases"),
                "practitioner_id": link("practitioner", "practitioners"),
            },
        ),
        "cases": (
            "patient_cases",
            {
                "case_id": field("id"),
                "patient_id": link("patient", "patients"),
                "name": field("name"),
                "issue_date": field("issue_date"),
                "expiry_date": field("expiry_date"),
                "max_sessions": field("max_sessions"),
                "max_invoiceable_amount": field("max_invoiceable_amount"),
                "closed": field("closed"),
                "closed_at": field("closed_at"),
                "referral_type": field("referral_type"),
                "referring_provider": contact_name(contacts),
            },
        ),
    }


REQUIRED_FOLDERS = {"patients": "patients", "appointments": "individual_appointments"}


def page_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if p.is_file())


def read_record(record: Record, getters: dict[str, Getter]) -> dict[str, str | None | BadValue]:
    """Every canonical column of one record; a field the adapter cannot read is a BadValue
    (its record is rejected with the reason), never an error that stops the entity."""
    values: dict[str, str | None | BadValue] = {}
    for name, get in getters.items():
        try:
            values[name] = get(record)
        except (TypeError, AttributeError, ValueError) as err:
            values[name] = BadValue(f"{name} could not be read from the record ({err})")
    return values


def read_page(path: Path, resource: str) -> list[Any]:
    try:
        body = json.loads(path.read_bytes(), parse_int=str, parse_float=str)
    except RecursionError:
        raise ExtractFileError(
            f"{path}: the page is nested too deeply to be a Cliniko page; re-run the extract "
            f"for '{resource}'"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExtractFileError(
            f"{path}: the page is not valid JSON ({err}); re-run the extract for '{resource}'"
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get(resource), list):
        raise ExtractFileError(
            f"{path}: expected a Cliniko page with a '{resource}' list; "
            "is this file in the right folder?"
        )
    return body[resource]


def count_records(folder: Path, resource: str) -> int:
    """Records in a resource's page folder (each page read as JSON)."""
    return sum(len(read_page(p, resource)) for p in page_files(folder))


def load_contacts(extract_dir: Path) -> dict[str, str]:
    folder = extract_dir / "contacts"
    names: dict[str, str] = {}
    if not folder.is_dir():
        return names
    for page in page_files(folder):
        for record in read_page(page, "contacts"):
            if not isinstance(record, dict) or text(record.get("id")) is None:
                continue
            person = " ".join(
                p for p in (text(record.get("first_name")), text(record.get("last_name"))) if p
            )
            name = person or text(record.get("company_name"))
            if name:
                names[str(text(record.get("id")))] = name
    return names


def read_cliniko_text(extract_dir: Path, ent: Entity) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Flatten an entity's page folder to text columns.

    Returns (rows, rejected records that are not JSON objects, number of records).
    """
    contacts = load_contacts(extract_dir) if ent.name == "cases" else {}
    resource, getters = mappings(contacts)[ent.name]
    folder = extract_dir / resource
    columns: dict[str, list[str | None]] = {name: [] for name in getters}
    files: list[str] = []
    rows: list[int] = []
    rejected: list[tuple[str, int, str, str]] = []
    total = 0
    for page in page_files(folder):
        for position, record in enumerate(read_page(page, resource), start=1):
            total += 1
            if not isinstance(record, dict):
                rejected.append(
                    (str(page), position, "record is not a JSON object", text(record) or "")
                )
                continue
            values = read_record(record, getters)
            bad = [v.reason for v in values.values() if isinstance(v, BadValue)]
            if bad:
                rejected.append((str(page), position, "; ".join(bad), text(record) or ""))
                continue
            for name, value in values.items():
                columns[name].append(value)  # type: ignore[arg-type]
            files.append(str(page))
            rows.append(position)
    frame = pl.DataFrame(
        {**columns, SOURCE_FILE: files, SOURCE_ROW: rows},
        schema={**{n: pl.String for n in getters}, SOURCE_FILE: pl.String, SOURCE_ROW: pl.Int64},
    )
    rejects = pl.DataFrame(
        rejected,
        schema=REJECTED_SCHEMA,
        orient="row",
    )
    return frame, rejects, total
