"""The segment language as strict pydantic models (docs/segments.md, docs/workflow.md).

These models check the *shape* of a definition (known keys, known operators, nesting);
`segments.validation` then checks it against the field catalogue (field names, the
operators a field's type allows, value types, dates), so that every mistake is reported
with the file and the path inside it before anything runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from segments.workflow_block import WorkflowSpec

FIELD_OPS = (
    "eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "between",
    "is_null", "is_not_null", "is_true", "is_false",
    "contains", "starts_with", "contains_any", "contains_all", "within_km",
)  # fmt: skip
COUNT_OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "between")
EVENTS = ("appointments", "invoices", "leads", "diagnoses")

FieldOp = Literal[
    "eq", "neq", "in", "not_in", "gt", "gte", "lt", "lte", "between",
    "is_null", "is_not_null", "is_true", "is_false",
    "contains", "starts_with", "contains_any", "contains_all", "within_km",
]  # fmt: skip
CountOp = Literal["eq", "neq", "gt", "gte", "lt", "lte", "between"]

# Tags of the condition union; they contain spaces so they can never be mistaken for a
# key when pydantic's error locations are turned into definition paths.
FIELD_TAG, EVENTS_TAG, GROUP_TAG = "field condition", "events condition", "group"
UNION_TAGS = {FIELD_TAG, EVENTS_TAG, GROUP_TAG}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FieldCondition(Strict):
    field: str
    op: FieldOp
    # Checked against the field's type in validation; `value` absent and `value: null`
    # are told apart through `model_fields_set`.
    value: Any = None


class Window(Strict):
    from_: Any = Field(default=None, alias="from")
    to: Any = None


class Count(Strict):
    op: CountOp
    value: Any = None


class EventsCondition(Strict):
    events: Literal["appointments", "invoices", "leads", "diagnoses"]
    where: Group | None = None
    within: Window | None = None
    # Without `count` a member needs at least one matching event.
    count: Count = Count(op="gte", value=1)


def _condition_kind(raw: Any) -> str | None:
    if isinstance(raw, dict):
        if "events" in raw:
            return EVENTS_TAG
        if "field" in raw or "op" in raw:
            return FIELD_TAG
        if "conditions" in raw or "match" in raw:
            return GROUP_TAG
        return None
    if isinstance(raw, FieldCondition):
        return FIELD_TAG
    if isinstance(raw, EventsCondition):
        return EVENTS_TAG
    if isinstance(raw, Group):
        return GROUP_TAG
    return None


Condition = Annotated[
    Annotated[FieldCondition, Tag(FIELD_TAG)]
    | Annotated[EventsCondition, Tag(EVENTS_TAG)]
    | Annotated["Group", Tag(GROUP_TAG)],
    Discriminator(
        _condition_kind,
        custom_error_type="condition_kind",
        custom_error_message=(
            "not a condition: write {field, op, value}, {events, where, within, count} "
            "or a nested group {match, conditions}"
        ),
    ),
]


class Group(Strict):
    match: Literal["all", "any"] = "all"
    conditions: list[Condition] = Field(min_length=1)


class SegmentDefinition(Strict):
    name: str
    description: str = ""
    entity: Literal["patient", "case"] = "patient"
    mode: Literal["dynamic", "snapshot"] = "dynamic"
    visibility: Literal["shared", "private"] = "shared"
    owner: str | None = None
    department: str | None = None
    tags: list[str] = []
    include: Group
    exclude: Group | None = None
    # The one model of the block, shared with the workflow engine (docs/workflow.md).
    workflow: WorkflowSpec | None = None


EventsCondition.model_rebuild()
Group.model_rebuild()

# Every key the language knows, for "did you mean" hints on unknown keys.
KNOWN_KEYS = sorted(
    {
        (f.alias or name)
        for model in (FieldCondition, Window, Count, EventsCondition, Group, WorkflowSpec,
                      SegmentDefinition)
        for name, f in model.model_fields.items()
    }
)  # fmt: skip
