"""Cliniko API pages → the canonical raw entities (docs/extract-formats.md).

What is read follows Cliniko's API documentation, endpoint by endpoint (`ENDPOINTS`). An
extract holds one folder per endpoint, each with the page files as the API returned them.
Several endpoints may feed one entity, and an endpoint can say something its records do
not: a practitioner listed by `/practitioners/inactive` is inactive (Cliniko has no
`active` field), one listed by `/practitioners` is active.

The pages are JSON. Numbers are read as text (ids can be 19-digit integers that a float
would corrupt; money arrives as strings anyway), link objects become the id at the end of
their URL, and `""` becomes null. The result is the same text frame the CSV reader
produces, so parsing and validation are shared.

A record Cliniko marks deleted (`deleted_at`) is not part of the clinic: it is rejected
with that reason, and it replaces any earlier copy of the same id (the deleted endpoints
are read last). A deleted invoice is kept, as `void`. A pull is checked for completeness
(`check_complete`): a folder whose pages do not add up to `total_entries`, or whose
`links.next` chain is broken, is refused rather than taken for the whole clinic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import polars as pl

from ingest.csv_reader import ExtractFileError
from ingest.entities import DELETED_AT, SOURCE_FILE, SOURCE_ROW, Entity
from ingest.parse import REJECTED_SCHEMA

Record = dict[str, Any]


@dataclass(frozen=True)
class BadValue:
    """A field that cannot be read as what Cliniko documents: the record is rejected."""

    reason: str


Getter = Callable[[Record], "str | None | BadValue"]


@dataclass(frozen=True)
class Endpoint:
    """One documented Cliniko endpoint, as an extract folder."""

    folder: str  # the folder of its page files in the extract
    path: str  # the API path under /v1
    resource: str  # the key of the record list in its pages
    # Canonical column values every record of the endpoint has (what the endpoint says).
    implies: tuple[tuple[str, str], ...] = ()

    @property
    def variant(self) -> str:
        """'' for a list, else what its records are: deleted, cancelled, archived, inactive."""
        return self.path.partition("/")[2]


def endpoint(path: str, resource: str | None = None, **implies: str) -> Endpoint:
    return Endpoint(path.replace("/", "_"), path, resource or path.split("/")[0],
                    tuple(implies.items()))  # fmt: skip


# entity → its endpoints, in reading order: the later ones win for an id seen twice, so
# deleted records come last.
ENDPOINTS: dict[str, tuple[Endpoint, ...]] = {
    "patients": (
        endpoint("patients"),
        endpoint("patients/archived", status="archived"),
        endpoint("patients/deleted"),
    ),
    "practitioners": (
        endpoint("practitioners", active="true"),
        endpoint("practitioners/inactive", active="false"),
    ),
    "locations": (endpoint("businesses"),),
    "appointment_types": (endpoint("appointment_types"), endpoint("appointment_types/archived")),
    "appointments": (
        endpoint("individual_appointments"),
        endpoint("individual_appointments/cancelled"),
        endpoint("individual_appointments/deleted"),
    ),
    "invoices": (endpoint("invoices"), endpoint("invoices/deleted", status="void")),
    "invoice_items": (endpoint("invoice_items"), endpoint("invoice_items/deleted")),
    "cases": (endpoint("patient_cases"),),
}
# Read for what they tell about other records: referrers' names, case attendees.
CONTACTS = endpoint("contacts")
ATTENDEES = (endpoint("attendees"), endpoint("attendees/cancelled"), endpoint("attendees/deleted"))
LOOKUPS: tuple[Endpoint, ...] = (CONTACTS, *ATTENDEES)
# Every endpoint an extract is pulled from (the extractor's list).
ALL_ENDPOINTS: tuple[Endpoint, ...] = (*(e for es in ENDPOINTS.values() for e in es), *LOOKUPS)
# An extract without these folders is not a Cliniko extract of a clinic.
REQUIRED_FOLDERS = {"patients": "patients", "appointments": "individual_appointments"}

# Cliniko's invoice statuses (its documentation's table): 10 Open, 20 Paid, 30 Closed,
# 40 Open (credit) — paid more than its total, so nothing is owed.
INVOICE_STATUS = {"10": "open", "20": "paid", "30": "closed", "40": "paid"}


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


def own_id(resource: str) -> Getter:
    """The record's id: its `id`, or (on a deleted endpoint, which lists only `deleted_at`
    and `links`) the end of its own `links.self`."""

    def get(record: Record) -> str | None | BadValue:
        ident = text(record.get("id"))
        if ident is not None:
            # "7.0" is not Cliniko's 7: an id is digits (or letters), never a number's text.
            if not _ID.match(ident):
                return BadValue(f"id {ident!r} is not a Cliniko record id")
            return ident
        found = link_id({"links": record.get("links")}, resource)
        if isinstance(found, BadValue):
            return BadValue(f"id: the record has no id, and its own {found.reason}")
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


def invoice_status(record: Record) -> str | None | BadValue:
    if text(record.get("deleted_at")):
        return "void"
    raw = text(record.get("status"))
    if raw is None:
        # Read as open, it would be chased as owed in full.
        return BadValue("status is missing; Cliniko gives every invoice one of 10, 20, 30, 40")
    # An unknown code stays as it is, so validation rejects the row and names the value.
    return INVOICE_STATUS.get(raw, raw)


def contact_name(link_field: str, contacts: dict[str, str]) -> Getter:
    """The name of the contact a link names (a referring doctor), else its id."""

    def get(record: Record) -> str | None | BadValue:
        contact = link_id(record.get(link_field), "contacts")
        if isinstance(contact, BadValue):
            return BadValue(f"{link_field} {contact.reason}")
        if contact is None:
            return None
        return contacts.get(contact, contact)

    return get


def iana_zone(record: Record) -> str | None:
    """A business's IANA time zone: `time_zone_identifier` (Australia/Melbourne), not
    `time_zone`, Cliniko's label (Melbourne), unless that is itself an IANA name."""
    zone = text(record.get("time_zone_identifier"))
    if zone is None:
        label = text(record.get("time_zone"))
        zone = label if label is not None and "/" in label else None
    return zone


# -- custom fields ---------------------------------------------------------------------


def custom_field_values(record: Record) -> dict[str, str] | BadValue:
    """Cliniko's `custom_fields` as "Section / Field" → value: the text of a text field,
    the selected option(s) of a choice field (joined by ", "), the `other` text when given.
    """
    raw = record.get("custom_fields")
    if raw in (None, "", {}):
        return {}
    sections = raw.get("sections") if isinstance(raw, dict) else None
    if not isinstance(sections, list):
        return BadValue(f"custom_fields {text(raw)!r} is not Cliniko's {{sections: [...]}}")
    values: dict[str, str] = {}
    for section in sections:
        if not isinstance(section, dict):
            continue
        for item in section.get("fields") or []:
            if not isinstance(item, dict):
                continue
            key = f"{text(section.get('name')) or '?'} / {text(item.get('name')) or '?'}"
            options = item.get("options")
            if isinstance(options, list):
                chosen = [text(o.get("name")) for o in options
                          if isinstance(o, dict) and o.get("selected") is True]  # fmt: skip
                other = item.get("other")
                if (isinstance(other, dict) and other.get("selected") is True
                        and text(other.get("value"))):  # fmt: skip
                    chosen.append(text(other.get("value")))
                value = ", ".join(c for c in chosen if c) or None
            else:
                value = text(item.get("value"))
            if value is not None:
                values[key] = value
    return values


def custom_fields(record: Record) -> str | None | BadValue:
    values = custom_field_values(record)
    if isinstance(values, BadValue):
        return values
    return json.dumps(values, ensure_ascii=False, sort_keys=True) if values else None


_INSURANCE = re.compile(r"\binsur|\bhealth fund|\bfund\b|\bcover(age)?\b", re.IGNORECASE)
_NOT_A_PLAN = re.compile(
    r"number|\bno\b|\bid\b|expir|date|member|policy|note|comment|\?", re.IGNORECASE
)
_NOT_A_NAME = re.compile(r"^(yes|no|true|false|y|n|none|n/a)$", re.IGNORECASE)


def insurance_plan(record: Record) -> str | None:
    """The patient's insurer, where a clinic keeps it in Cliniko: the first custom field of
    an insurance, health fund or cover section (or so named) that is not a number, date,
    membership, policy, note or question, and whose value is not yes / no, e.g.
    "Insurance coverage / Provider" → "Super Insurance"."""
    values = custom_field_values(record)
    if isinstance(values, BadValue):
        return None
    for key, value in values.items():
        section, _, name = key.partition(" / ")
        if (
            (_INSURANCE.search(section) or _INSURANCE.search(name))
            and not _NOT_A_PLAN.search(name)
            and not _NOT_A_NAME.match(value.strip())
        ):
            return value
    return None


# -- entities ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Lookups:
    """What other endpoints tell about a record: a contact's name, an appointment's case."""

    contacts: dict[str, str]
    case_of_appointment: dict[str, str]


NO_LOOKUPS = Lookups({}, {})


def appointment_case(lookups: Lookups) -> Getter:
    """The case of an appointment: its `patient_case` link, else the case whose
    `attendee_ids` name the appointment's attendee."""
    linked = link("patient_case", "patient_cases")

    def get(record: Record) -> str | None | BadValue:
        found = linked(record)
        if found is not None:
            return found
        ident = text(record.get("id"))
        return lookups.case_of_appointment.get(ident) if ident else None

    return get


def archived_or(name: str) -> Getter:
    """A case's `closed` / `closed_at`: an archived case is closed, at its archiving."""

    def get(record: Record) -> str | None:
        archived = text(record.get("archived_at"))
        if name == "closed":
            return "true" if archived else text(record.get("closed"))
        return text(record.get("closed_at")) or archived

    return get


def mappings(lookups: Lookups = NO_LOOKUPS) -> dict[str, dict[str, Getter]]:
    """entity → canonical column → how it is read from a Cliniko record."""
    return {
        "patients": {
            "patient_id": own_id("patients"),
            "first_name": field("first_name"),
            "last_name": field("last_name"),
            "date_of_birth": field("date_of_birth"),
            "sex": field("sex", "gender"),
            "email": field("email"),
            "mobile": mobile,
            "address": address,
            "city": field("city"),
            "state": field("state"),
            "post_code": field("post_code"),
            "country": field("country"),
            "referral_source": field("referral_source"),
            "referring_provider": contact_name("referring_doctor", lookups.contacts),
            "insurance_plan": insurance_plan,
            "status": patient_status,
            "accepted_email_marketing": field("accepted_email_marketing"),
            "accepted_sms_marketing": field("accepted_sms_marketing"),
            "created_at": field("created_at"),
            "custom_fields": custom_fields,
        },
        "practitioners": {
            "practitioner_id": own_id("practitioners"),
            "first_name": field("first_name"),
            "last_name": field("last_name"),
            "designation": field("designation"),
        },
        "locations": {
            "location_id": own_id("businesses"),
            "name": field("business_name", "display_name"),
            "city": field("city"),
            "state": field("state"),
            "post_code": field("post_code"),
            "time_zone": iana_zone,
        },
        "appointment_types": {
            "appointment_type_id": own_id("appointment_types"),
            "name": field("name"),
            "category": field("category"),
            "duration_minutes": field("duration_in_minutes"),
        },
        "appointments": {
            "appointment_id": own_id("individual_appointments"),
            "patient_id": link("patient", "patients"),
            "starts_at": field("starts_at"),
            "appointment_type_id": link("appointment_type", "appointment_types"),
            "practitioner_id": link("practitioner", "practitioners"),
            "location_id": link("business", "businesses"),
            "case_id": appointment_case(lookups),
            "ends_at": field("ends_at"),
            "created_at": field("created_at"),
            "cancelled_at": field("cancelled_at"),
            "did_not_arrive": field("did_not_arrive"),
            "patient_arrived": field("patient_arrived"),
        },
        "invoices": {
            "invoice_id": own_id("invoices"),
            "patient_id": link("patient", "patients"),
            "issue_date": field("issue_date"),
            "total_amount": field("total_amount"),
            "status": invoice_status,
            "appointment_id": link("appointment", ("appointments", "individual_appointments")),
            "case_id": link("patient_case", "patient_cases"),
            "practitioner_id": link("practitioner", "practitioners"),
        },
        "invoice_items": {
            "invoice_id": link("invoice", "invoices"),
            "item_name": field("name"),
            "quantity": field("quantity"),
            "unit_price": field("unit_price"),
        },
        "cases": {
            "case_id": own_id("patient_cases"),
            "patient_id": link("patient", "patients"),
            "name": field("name"),
            "issue_date": field("issue_date"),
            "expiry_date": field("expiry_date"),
            "max_sessions": field("max_sessions"),
            "max_invoiceable_amount": field("max_invoiceable_amount"),
            "closed": archived_or("closed"),
            "closed_at": archived_or("closed_at"),
            "referral_type": field("referral_type"),
            "referring_provider": contact_name("contact", lookups.contacts),
            "sessions_include_cancelled": field("include_cancelled_attendees"),
            "sessions_include_dna": field("include_dna_attendees"),
        },
    }


# -- pages -------------------------------------------------------------------------------


def page_files(folder: Path) -> list[Path]:
    """The page files in page order: by the number in the name (page-9 before page-10,
    page-99999 before page-100000), then by name."""
    return sorted((p for p in folder.glob("*.json") if p.is_file()), key=_page_order)


def _page_order(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def read_body(path: Path, resource: str) -> dict[str, Any]:
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
    return body


def read_page(path: Path, resource: str) -> list[Any]:
    return read_body(path, resource)[resource]


def _page_number(url: Any) -> int | None:
    if not isinstance(url, str):
        return None
    pages = parse_qs(urlsplit(url).query).get("page")
    try:
        return int(pages[0]) if pages else None
    except ValueError:
        return None


def check_complete(folder: Path, resource: str) -> str | None:
    """Why the pages of `folder` are not a whole pull, or None.

    Whole means: the pages add up to the `total_entries` the API gave, and every page but
    the last links to a next page the folder holds (the last links to none).
    """
    pages = page_files(folder)
    if not pages:
        return None
    bodies = [read_body(p, resource) for p in pages]
    records = sum(len(b[resource]) for b in bodies)
    numbers = {n for b in bodies if (n := _page_number((b.get("links") or {}).get("self")))}
    for page, body in zip(pages, bodies, strict=True):
        nxt = (body.get("links") or {}).get("next") if isinstance(body.get("links"), dict) else None
        number = _page_number(nxt)
        if nxt and number is not None and numbers and number not in numbers:
            return (
                f"{page} links to page {number} of {resource} ({nxt}), which the folder does "
                f"not hold; {records:,} record(s) were found"
            )
    last_next = (bodies[-1].get("links") or {}).get("next") if isinstance(
        bodies[-1].get("links"), dict) else None  # fmt: skip
    if last_next:
        return (
            f"{pages[-1]}, the last page of the folder, still links to a next page "
            f"({last_next}); {records:,} record(s) were found"
        )
    without = [
        p for p, b in zip(pages, bodies, strict=True) if text(b.get("total_entries")) is None
    ]
    if without:
        return (
            f"{without[0]} has no total_entries, so the pull cannot be checked for "
            "completeness (Cliniko gives it on every page); re-run the extract"
        )
    totals = {text(b.get("total_entries")) for b in bodies} - {None}
    for total in totals:
        try:
            expected = int(total)
        except ValueError:
            return f"{pages[0]}: total_entries {total!r} is not a number"
        if expected != records:
            return (
                f"the pages of {folder} hold {records:,} record(s) but the API said "
                f"total_entries {expected:,}"
            )
    return None


def count_records(folder: Path, resource: str) -> int:
    """Records in a resource's page folder (each page read as JSON)."""
    return sum(len(read_page(p, resource)) for p in page_files(folder))


def count_entity_records(extract_dir: Path, ent: Entity) -> int:
    """Records in every folder an entity is read from."""
    return sum(
        count_records(extract_dir / e.folder, e.resource)
        for e in ENDPOINTS.get(ent.name, ())
        if (extract_dir / e.folder).is_dir()
    )


def records(extract_dir: Path, ep: Endpoint):  # noqa: ANN201 - yields (page, position, record)
    folder = extract_dir / ep.folder
    if not folder.is_dir():
        return
    for page in page_files(folder):
        for position, record in enumerate(read_page(page, ep.resource), start=1):
            yield page, position, record


def load_contacts(extract_dir: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for _, _, record in records(extract_dir, CONTACTS):
        if not isinstance(record, dict) or text(record.get("id")) is None:
            continue
        person = " ".join(
            p for p in (text(record.get("first_name")), text(record.get("last_name"))) if p
        )
        name = person or text(record.get("company_name"))
        if name:
            names[str(text(record.get("id")))] = name
    return names


def load_case_of_appointment(extract_dir: Path) -> dict[str, str]:
    """appointment id → case id, from the cases' `attendee_ids` and each attendee's
    booking (an individual appointment's booking is the appointment)."""
    booking_of: dict[str, str] = {}
    for ep in ATTENDEES:
        for _, _, record in records(extract_dir, ep):
            if isinstance(record, dict) and (ident := text(record.get("id"))):
                booking = link_id(record.get("booking"), ("bookings", "individual_appointments"))
                if isinstance(booking, str):
                    booking_of[ident] = booking
    case_of: dict[str, str] = {}
    for ep in ENDPOINTS["cases"]:
        for _, _, record in records(extract_dir, ep):
            if not isinstance(record, dict) or not (case := text(record.get("id"))):
                continue
            attendees = record.get("attendee_ids")
            for attendee in attendees if isinstance(attendees, list) else []:
                appointment = booking_of.get(str(attendee))
                if appointment is not None:
                    case_of.setdefault(appointment, case)
    return case_of


def lookups_for(extract_dir: Path, ent: Entity) -> Lookups:
    contacts = load_contacts(extract_dir) if ent.name in ("patients", "cases") else {}
    cases = load_case_of_appointment(extract_dir) if ent.name == "appointments" else {}
    return Lookups(contacts, cases)


def endpoints_read(ent: Entity) -> tuple[Endpoint, ...]:
    """Every endpoint an entity's rows depend on: its own, and those it looks things up in
    (a patient's referrer in contacts; an appointment's case in attendees and cases)."""
    own = ENDPOINTS.get(ent.name, ())
    if ent.name in ("patients", "cases"):
        return (*own, CONTACTS)
    if ent.name == "appointments":
        return (*own, *ATTENDEES, *ENDPOINTS["cases"])
    return own


# Written by the extractor (`audiences extract cliniko`) beside the endpoint folders:
# how far the pull of each endpoint got.
STATE_FILE_NAME = "_extract_state.json"


def pull_state(extract_dir: Path) -> dict[str, dict[str, Any]] | str | None:
    """The extractor's record of each endpoint (folder → its entry), None for a folder
    the extractor did not write (pages put together by hand), or why it cannot be read."""
    path = extract_dir / STATE_FILE_NAME
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        entries = body["resources"]
        if not isinstance(entries, dict):
            raise TypeError("resources is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} cannot be read ({err}), so whether the pull finished is unknown"
    return {k: v for k, v in entries.items() if isinstance(v, dict)}


def incomplete_folders(extract_dir: Path, ent: Entity) -> list[str]:
    """The completeness problems of the folders an entity is read from: the extractor's
    state says an endpoint did not finish, or a folder's pages do not add up."""
    state = pull_state(extract_dir)
    if isinstance(state, str):
        return [state]
    problems, unfinished = [], []
    for ep in endpoints_read(ent):
        folder = extract_dir / ep.folder
        if state is not None:
            entry = state.get(ep.folder, {})
            if not (entry.get("complete") is True or entry.get("unavailable") is True):
                pulled = f"{entry.get('pages_saved', 0)} page(s) pulled" if entry else "not pulled"
                unfinished.append(f"{ep.path} ({pulled})")
                continue
        if folder.is_dir() and (problem := check_complete(folder, ep.resource)):
            problems.append(problem)
    if unfinished:
        where = extract_dir / STATE_FILE_NAME
        problems.insert(0, f"the extract stopped before these were complete: "
                           f"{', '.join(unfinished)} ({where})")  # fmt: skip
    return problems


def read_cliniko_text(
    extract_dir: Path, ent: Entity, accept_incomplete: bool = False
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Flatten an entity's page folders to text columns.

    Returns (rows, records rejected here: not JSON objects or with fields that cannot be
    read; number of records). A deleted record stays among the rows, marked in
    `DELETED_AT`, so that it replaces an earlier copy of its id and is then rejected for
    being deleted. An incomplete pull is refused unless `accept_incomplete`.
    """
    if not accept_incomplete:
        problems = incomplete_folders(extract_dir, ent)
        if problems:
            raise ExtractFileError(
                f"the Cliniko pull of {ent.name} is incomplete: " + "; ".join(problems)
                + ". Re-run `audiences extract cliniko` (it resumes), or, to load what is "
                "there on purpose, run with --accept-incomplete (in the Dagster UI: the run "
                "tag clinic-audiences/accept_incomplete=true)"
            )
    getters = mappings(lookups_for(extract_dir, ent))[ent.name]
    key = next(iter(getters))
    implied_columns = {n for ep in ENDPOINTS.get(ent.name, ()) for n, _ in ep.implies}
    names = [*getters, *sorted(implied_columns - set(getters))]
    # Canonical columns Cliniko has no field for (coordinates, amount paid, ...) are null.
    names += [c for c in ent.column_names if c not in names]
    columns: dict[str, list[str | None]] = {name: [] for name in (*names, DELETED_AT)}
    files: list[str] = []
    rows: list[int] = []
    rejected: list[tuple[str, int, str, str]] = []
    total = 0
    # A keyless entity (invoice lines) cannot let a deleted copy replace the live one by
    # key: the deleted endpoint's Cliniko ids are looked up instead.
    deleted_ids = deleted_record_ids(extract_dir, ent) if not ent.key else {}
    for ep in ENDPOINTS.get(ent.name, ()):
        implied = dict(ep.implies)
        for page, position, record in records(extract_dir, ep):
            total += 1
            if not isinstance(record, dict):
                if ep.variant == "deleted":
                    raise unreadable_deletion(page, position, ep, "it is not a JSON object")
                rejected.append(
                    (str(page), position, "record is not a JSON object", text(record) or "")
                )
                continue
            # What the endpoint says overrides what the record says (or cannot say).
            values = {**read_record(record, getters), **implied}
            deleted = deleted_at(ent, ep, record)
            bad = [v.reason for v in values.values() if isinstance(v, BadValue)]
            if deleted and isinstance(values[key], str):
                # A deleted record is rejected for that; what else cannot be read of it
                # does not matter.
                values = {n: None if isinstance(v, BadValue) else v for n, v in values.items()}
                bad = []
            elif ep.variant == "deleted" and ent.key and not isinstance(values[key], str):
                # The deletion cannot be applied: the live copy would stay a patient.
                reason = "; ".join(bad) or f"it names no {ent.key}"
                raise unreadable_deletion(page, position, ep, reason)
            if ep.variant == "cancelled" and values.get("cancelled_at") is None:
                # The endpoint says it is cancelled: when, as near as the record tells.
                values["cancelled_at"] = text(record.get("updated_at")) or values.get("starts_at")
            own = text(record.get("id"))
            if not deleted and own is not None and own in deleted_ids:
                deleted = f"{deleted_ids[own]} (listed by {ent.name}/deleted)"
            if bad:
                rejected.append((str(page), position, "; ".join(bad), text(record) or ""))
                continue
            for name in names:
                columns[name].append(values.get(name))  # type: ignore[arg-type]
            columns[DELETED_AT].append(deleted)
            files.append(str(page))
            rows.append(position)
    frame = pl.DataFrame(
        {**columns, SOURCE_FILE: files, SOURCE_ROW: rows},
        schema={**{n: pl.String for n in columns}, SOURCE_FILE: pl.String, SOURCE_ROW: pl.Int64},
    )
    rejects = pl.DataFrame(rejected, schema=REJECTED_SCHEMA, orient="row")
    return frame, rejects, total


NO_TIME = "a time Cliniko did not give"


def deleted_at(ent: Entity, ep: Endpoint, record: Record) -> str | None:
    """When Cliniko deleted the record, or None. A record of a deleted endpoint is deleted
    whatever its fields say. An invoice keeps its record (a deleted invoice is void); an
    appointment's `archived_at` is Cliniko's older name for its deletion, so an archived
    appointment is deleted too (archived patients, cases and appointment types are kept,
    as archived, closed and still naming old visits)."""
    if ent.name == "invoices":
        return None
    deleted = text(record.get("deleted_at"))
    if deleted is None and ent.name == "appointments":
        deleted = text(record.get("archived_at"))
    if deleted is None and ep.variant == "deleted":
        deleted = NO_TIME
    return deleted


def deleted_record_ids(extract_dir: Path, ent: Entity) -> dict[str, str]:
    """Cliniko id → when, for the records of an entity's deleted endpoint."""
    found: dict[str, str] = {}
    for ep in ENDPOINTS.get(ent.name, ()):
        if ep.variant != "deleted":
            continue
        for _, _, record in records(extract_dir, ep):
            if isinstance(record, dict) and (ident := text(record.get("id"))):
                found[ident] = text(record.get("deleted_at")) or NO_TIME
    return found


def unreadable_deletion(page: Path, position: int, ep: Endpoint, reason: str) -> ExtractFileError:
    return ExtractFileError(
        f"{page}: record {position} of {ep.path} cannot be read ({reason}), so the deletion "
        "it records cannot be applied and a deleted record would stay in the clinic; "
        "re-run the extract"
    )


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
