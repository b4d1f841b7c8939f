"""The field catalogue: which fields a segment may use, and their types.

The catalogue is taken from the marts' dbt column docs (`_marts__models.yml`: every
column has a `data_type` and a `description`), so an analyst who documents a new mart
column makes it usable in segments. Types decide which operators and values are valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CATALOGUE_PATH = PROJECT_ROOT / "dbt_project" / "models" / "marts" / "_marts__models.yml"


class FieldType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"
    LIST = "list"
    # The virtual `location` field: a patient's latitude / longitude pair.
    LOCATION = "location"


# What a segment's `entity` is evaluated over.
ENTITY_TABLES = {"patient": "patient_features", "case": "case_features"}
ENTITY_KEYS = {"patient": ("patient_id",), "case": ("patient_id", "case_id")}


@dataclass(frozen=True)
class EventSource:
    """An event mart that `events:` conditions count over."""

    table: str
    # The event's natural date: the `within` window applies to it.
    date_field: str
    # Events that carry a case_id count per case in `entity: case` segments.
    has_case: bool
    # Where the builder lists the event, among the field groups below.
    group: str = "Contact"


EVENT_SOURCES = {
    "appointments": EventSource("appointments", "start_date", has_case=True, group="Appointment"),
    "invoices": EventSource("invoices", "issue_date", has_case=True, group="Billing"),
    "leads": EventSource("leads", "created_date", has_case=False, group="Lead"),
    "diagnoses": EventSource("diagnoses", "recorded_date", has_case=False, group="Case"),
}

# The groups a clinic thinks of its fields in, in the order the builder shows them. A
# model names its columns' groups in `config.meta.field_groups`; a column it leaves out
# is listed under OTHER_GROUP.
FIELD_GROUPS = ("Contact", "Lead", "Appointment", "Billing", "Case")
OTHER_GROUP = "Other"

LOCATION_FIELD = "location"


@dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    description: str = ""
    group: str = OTHER_GROUP


class CatalogueError(ValueError):
    """The catalogue file itself is missing or malformed."""


@dataclass(frozen=True)
class Catalogue:
    # table name (without schema) -> field name -> Field
    tables: dict[str, dict[str, Field]]
    source: str = ""

    def entity_fields(self, entity: str) -> dict[str, Field]:
        table = ENTITY_TABLES[entity]
        fields = dict(self._table(table))
        if "latitude" in fields and "longitude" in fields:
            fields[LOCATION_FIELD] = Field(
                LOCATION_FIELD, FieldType.LOCATION, "latitude / longitude, for within_km",
                fields["latitude"].group,
            )
        return fields

    def event_fields(self, events: str) -> dict[str, Field]:
        return self._table(EVENT_SOURCES[events].table)

    def _table(self, table: str) -> dict[str, Field]:
        if table not in self.tables:
            raise CatalogueError(
                f"the field catalogue ({self.source or 'given'}) has no model {table!r}; "
                f"document marts.{table} with its columns and data types"
            )
        return self.tables[table]


_INTEGER_TYPES = {
    "integer",
    "int",
    "bigint",
    "smallint",
    "tinyint",
    "hugeint",
    "int64",
    "int32",
    "ubigint",
    "uinteger",
    "usmallint",
    "utinyint",
    "long",
    "int4",
    "int8",
    "int2",
}
_NUMBER_PREFIXES = ("decimal", "numeric", "double", "float", "real", "number")
_STRING_PREFIXES = ("varchar", "text", "string", "char", "uuid")


def field_type_of(data_type: str) -> FieldType | None:
    """The segment type of a warehouse data type (DuckDB / dbt spelling); None if unknown."""
    t = data_type.strip().lower()
    if t.endswith("[]") or t.startswith(("list", "array")):
        return FieldType.LIST
    if t.startswith("timestamp"):
        return FieldType.TIMESTAMP
    if t == "date":
        return FieldType.DATE
    if t.startswith("bool"):
        return FieldType.BOOLEAN
    if t in _INTEGER_TYPES:
        return FieldType.INTEGER
    if t.startswith(_NUMBER_PREFIXES):
        return FieldType.NUMBER
    if t.startswith(_STRING_PREFIXES):
        return FieldType.STRING
    return None


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read the marts' dbt YAML (`models: [{name, columns: [{name, data_type, description}]}]`).

    Columns without a `data_type` are left out: a field whose type is unknown cannot be
    validated, so it cannot be used.
    """
    path = Path(path) if path else DEFAULT_CATALOGUE_PATH
    if not path.exists():
        raise CatalogueError(
            f"field catalogue {path} not found; it is the marts' dbt YAML "
            "(dbt_project/models/marts/_marts__models.yml)"
        )
    try:
        # libyaml's parser where it is installed: the catalogue is a large file, and
        # reading it is most of a cold `audiences preview` otherwise.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}  # noqa: S506
    except yaml.YAMLError as exc:
        raise CatalogueError(f"field catalogue {path} is not valid YAML: {exc}") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list):
        raise CatalogueError(f"field catalogue {path} has no `models:` list")
    tables: dict[str, dict[str, Field]] = {}
    for model in models:
        if not isinstance(model, dict) or "name" not in model:
            continue
        fields: dict[str, Field] = {}
        group_of = _field_groups(model, path)
        for col in model.get("columns") or []:
            if not isinstance(col, dict) or not col.get("name") or not col.get("data_type"):
                continue
            ftype = field_type_of(str(col["data_type"]))
            if ftype is None:
                raise CatalogueError(
                    f"{path}: model {model['name']} column {col['name']}: data_type "
                    f"{col['data_type']!r} has no segment type; use a DuckDB type such as "
                    "varchar, bigint, double, decimal(18,2), boolean, date, timestamptz, varchar[]"
                )
            fields[col["name"]] = Field(
                col["name"], ftype, str(col.get("description") or ""),
                group_of.get(col["name"], OTHER_GROUP),
            )  # fmt: skip
        tables[str(model["name"])] = fields
    return Catalogue(tables, source=str(path))


def _field_groups(model: dict, path: Path) -> dict[str, str]:
    """Column → group, from the model's `config: {meta: {field_groups: {group: [cols]}}}`."""
    config = model.get("config") if isinstance(model.get("config"), dict) else {}
    meta = config.get("meta") if isinstance(config.get("meta"), dict) else {}
    groups = meta.get("field_groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise CatalogueError(
            f"{path}: model {model['name']}: config.meta.field_groups must map a group name "
            "to a list of column names, e.g. {Contact: [first_name, last_name]}"
        )
    out: dict[str, str] = {}
    for group, columns in groups.items():
        for column in columns:
            if column in out:
                raise CatalogueError(
                    f"{path}: model {model['name']}: column {column!r} is in field groups "
                    f"{out[column]!r} and {group!r}; put it in one"
                )
            out[str(column)] = str(group)
    return out


def catalogue_from_columns(rows: list[tuple[str, str, str]], source: str) -> Catalogue:
    """A catalogue from (table, column, data_type) rows, e.g. a warehouse's information_schema."""
    tables: dict[str, dict[str, Field]] = {}
    for table, column, data_type in rows:
        ftype = field_type_of(data_type)
        if ftype is not None:
            tables.setdefault(table, {})[column] = Field(column, ftype)
    return Catalogue(tables, source=source)


def catalogue_from_warehouse(con) -> Catalogue:  # noqa: ANN001 - a duckdb connection
    """The marts' columns as the warehouse has them: for when the dbt YAML is not at hand."""
    rows = con.sql(
        "select table_name, column_name, data_type from information_schema.columns "
        "where table_schema = 'marts' order by table_name, ordinal_position"
    ).fetchall()
    return catalogue_from_columns(rows, source="warehouse schema marts")
