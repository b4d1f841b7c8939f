"""The raw entities of the extract contract (docs/extract-formats.md), one spec each.

Every other part of ingest reads these specs: the CSV reader (which columns are
required), the parser (how each column is typed), the pandera models (what values are
allowed), the warehouse writer (the `raw.<entity>` table layout) and the dbt sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """How a raw column is parsed from its text form."""

    STRING = "string"
    DATE = "date"  # YYYY-MM-DD
    TIMESTAMP = "timestamp"  # ISO-8601, UTC when no offset; stored as TIMESTAMPTZ (UTC)
    BOOLEAN = "boolean"  # true/false/1/0/yes/no, any case
    INTEGER = "integer"
    FLOAT = "float"
    MONEY = "money"  # decimal string, stored as DECIMAL(18, 2)


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind = Kind.STRING
    required: bool = False
    # Allowed values for enumerations: matched case-insensitively, stored as spelled here.
    choices: tuple[str, ...] | None = None
    # Inclusive numeric bounds, for coordinates, counts and amounts that cannot be negative.
    min_value: float | None = None
    max_value: float | None = None
    # A date that cannot lie after the day the extract describes (a date of birth).
    not_after_as_of: bool = False


@dataclass(frozen=True)
class Entity:
    name: str  # table name in the `raw` schema and CSV file stem
    columns: tuple[Column, ...]
    # The column whose duplicates collapse to the last occurrence (None: no key).
    key: str | None = None
    # Only patients and appointments must be present in a canonical extract.
    file_required: bool = False
    description: str = ""

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


S, D, T, B, INT, F, M = (
    Kind.STRING,
    Kind.DATE,
    Kind.TIMESTAMP,
    Kind.BOOLEAN,
    Kind.INTEGER,
    Kind.FLOAT,
    Kind.MONEY,
)

PATIENT_STATUSES = ("active", "inactive", "archived", "prospect")
INVOICE_STATUSES = ("open", "paid", "closed", "void")
LEAD_STATUSES = ("new", "contacted", "scheduled", "converted", "lost")
OPT_OUT_CHANNELS = ("sms", "email", "whatsapp", "all")
CODE_SYSTEMS = ("ICD-10", "CPT")

ENTITIES: tuple[Entity, ...] = (
    Entity(
        "patients",
        key="patient_id",
        file_required=True,
        description="People known to the clinic: patients and prospects (leads only).",
        columns=(
            Column("patient_id", S, required=True),
            Column("first_name"),
            Column("last_name"),
            Column("date_of_birth", D, not_after_as_of=True),
            Column("sex"),
            Column("email"),
            Column("mobile"),
            Column("has_whatsapp", B),
            Column("address"),
            Column("city"),
            Column("state"),
            Column("post_code"),
            Column("country"),
            Column("latitude", F, min_value=-90, max_value=90),
            Column("longitude", F, min_value=-180, max_value=180),
            Column("referral_source"),
            Column("referring_provider"),
            Column("insurance_plan"),
            Column("status", choices=PATIENT_STATUSES),
            Column("accepted_email_marketing", B),
            Column("accepted_sms_marketing", B),
            Column("created_at", T),
            # The PMS's own fields (Cliniko's custom fields): a JSON object of
            # "Section / Field" → value, e.g. {"Insurance coverage / Provider": "Bupa"}.
            Column("custom_fields"),
        ),
    ),
    Entity(
        "practitioners",
        key="practitioner_id",
        description="Clinicians; `left_at` set for those who left the practice.",
        columns=(
            Column("practitioner_id", S, required=True),
            Column("first_name"),
            Column("last_name"),
            Column("designation"),
            Column("active", B),
            Column("left_at", T),
        ),
    ),
    Entity(
        "locations",
        key="location_id",
        description="Clinic sites (Cliniko: businesses).",
        columns=(
            Column("location_id", S, required=True),
            Column("name"),
            Column("city"),
            Column("state"),
            Column("post_code"),
            Column("latitude", F, min_value=-90, max_value=90),
            Column("longitude", F, min_value=-180, max_value=180),
            Column("time_zone"),
        ),
    ),
    Entity(
        "appointment_types",
        key="appointment_type_id",
        description="Bookable services, grouped into categories (Physio, Chiro, ...).",
        columns=(
            Column("appointment_type_id", S, required=True),
            Column("name", S, required=True),
            Column("category"),
            Column("duration_minutes", INT, min_value=0),
        ),
    ),
    Entity(
        "appointments",
        key="appointment_id",
        file_required=True,
        description="Individual appointments, past and future, with their outcome flags.",
        columns=(
            Column("appointment_id", S, required=True),
            Column("patient_id", S, required=True),
            Column("starts_at", T, required=True),
            Column("appointment_type_id"),
            Column("practitioner_id"),
            Column("location_id"),
            Column("case_id"),
            Column("ends_at", T),
            Column("created_at", T),
            Column("cancelled_at", T),
            Column("did_not_arrive", B),
            Column("patient_arrived", B),
        ),
    ),
    Entity(
        "invoices",
        key="invoice_id",
        description="Invoices with their status and the amount paid so far.",
        columns=(
            Column("invoice_id", S, required=True),
            Column("patient_id", S, required=True),
            Column("issue_date", D, required=True),
            Column("total_amount", M, required=True),
            Column("status", choices=INVOICE_STATUSES),
            Column("amount_paid", M, min_value=0),
            Column("appointment_id"),
            Column("case_id"),
            Column("practitioner_id"),
        ),
    ),
    Entity(
        "invoice_items",
        description="Invoice lines (no key of their own).",
        columns=(
            Column("invoice_id", S, required=True),
            Column("item_name", S, required=True),
            # A clinic invoice line is a handful of units: a negative or huge quantity is an
            # export error, not a sale.
            Column("quantity", F, min_value=0, max_value=10_000),
            Column("unit_price", M),
        ),
    ),
    Entity(
        "cases",
        key="case_id",
        description="Referral cases (EPC, DVA, WorkCover, ...) with session and amount limits.",
        columns=(
            Column("case_id", S, required=True),
            Column("patient_id", S, required=True),
            Column("name", S, required=True),
            Column("issue_date", D),
            Column("expiry_date", D),
            Column("max_sessions", INT, min_value=0),
            Column("max_invoiceable_amount", M, min_value=0),
            Column("closed", B),
            Column("closed_at", T),
            Column("referral_type"),
            Column("referring_provider"),
            # Whether cancelled / did-not-arrive appointments of the case count toward its
            # sessions (Cliniko: include_cancelled_attendees, include_dna_attendees).
            Column("sessions_include_cancelled", B),
            Column("sessions_include_dna", B),
        ),
    ),
    Entity(
        "leads",
        key="lead_id",
        description="Leads from marketing campaigns, events and enquiries.",
        columns=(
            Column("lead_id", S, required=True),
            Column("patient_id", S, required=True),
            Column("campaign_name"),
            Column("created_at", T),
            Column("owner"),
            Column("status", choices=LEAD_STATUSES),
            Column("procedure_of_interest"),
            Column("source"),
        ),
    ),
    Entity(
        "diagnoses",
        description="Diagnosis and procedure codes recorded for patients.",
        columns=(
            Column("patient_id", S, required=True),
            Column("code_system", S, required=True, choices=CODE_SYSTEMS),
            Column("code", S, required=True),
            Column("recorded_at", T),
        ),
    ),
    Entity(
        "waitlist",
        key="waitlist_id",
        description="Waitlist entries; open while removed_at is empty.",
        columns=(
            Column("waitlist_id", S, required=True),
            Column("patient_id", S, required=True),
            Column("appointment_type_id"),
            Column("practitioner_id"),
            Column("location_id"),
            Column("added_at", T),
            Column("removed_at", T),
        ),
    ),
    Entity(
        "opt_outs",
        description="Channel opt-outs (sms, email, whatsapp or all).",
        columns=(
            Column("patient_id", S, required=True),
            Column("channel", S, required=True, choices=OPT_OUT_CHANNELS),
            Column("opted_out_at", T),
            Column("source"),
        ),
    ),
)

ENTITIES_BY_NAME: dict[str, Entity] = {e.name: e for e in ENTITIES}

# Lineage columns added to every raw row: where it came from in the extract.
SOURCE_FILE = "_source_file"
# CSV: physical line number of the record's first line; JSON: record number in its page.
SOURCE_ROW = "_source_row"
# A row's position in its source while it is being loaded (not stored).
ROW_NUMBER = "_row_number"
# When the source marks a record deleted (Cliniko's deleted_at): once it has replaced any
# earlier copy of its id, the record is rejected as not part of the clinic (not stored).
DELETED_AT = "_deleted_at"
# The layout of every `raw.<entity>__rejected` table.
REJECTED_COLUMNS: tuple[tuple[str, Kind], ...] = (
    ("source_file", Kind.STRING),
    ("source_row", Kind.INTEGER),
    ("reason", Kind.STRING),
    ("record", Kind.STRING),
)


def entity(name: str) -> Entity:
    try:
        return ENTITIES_BY_NAME[name]
    except KeyError:
        raise KeyError(
            f"unknown entity {name!r}; known entities: {', '.join(ENTITIES_BY_NAME)}"
        ) from None
