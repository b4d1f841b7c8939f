"""What the audience builder's page needs besides the app's routes: the field catalogue
as the editor lists it, who may save which segment, and reading a posted definition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segments.dates import DATE_VALUE_HELP
from segments.field_catalogue import EVENT_SOURCES, FIELD_GROUPS, OTHER_GROUP, Catalogue, Field
from segments.model import COUNT_OPS
from segments.validation import (
    OPS_BY_TYPE,
    Issue,
    Segment,
    SegmentValidationError,
    read_yaml,
)
from webapp.accounts import User

# What a new segment starts as: one condition, so the count means something at once.
NEW_DEFINITION: dict[str, Any] = {
    "name": "New segment",
    "description": "",
    "mode": "dynamic",
    "visibility": "private",
    "include": {"match": "all", "conditions": [{"field": "status", "op": "eq", "value": "active"}]},
}
OP_LABELS = {
    "eq": "is", "neq": "is not", "in": "is one of", "not_in": "is none of",
    "gt": "more than / after", "gte": "at least / on or after", "lt": "less than / before",
    "lte": "at most / on or before", "between": "between", "is_null": "is empty",
    "is_not_null": "is not empty", "is_true": "is yes", "is_false": "is no",
    "contains": "contains", "starts_with": "starts with", "contains_any": "has any of",
    "contains_all": "has all of", "within_km": "is within km of",
}  # fmt: skip


def _fields(fields: dict[str, Field]) -> list[dict[str, str]]:
    order = {g: n for n, g in enumerate((*FIELD_GROUPS, OTHER_GROUP))}
    listed = sorted(fields.values(), key=lambda f: (order.get(f.group, len(order)), f.name))
    return [{"name": f.name, "type": str(f.type), "group": f.group,
             "description": f.description} for f in listed]  # fmt: skip


def editor_catalogue(catalogue: Catalogue) -> dict[str, Any]:
    """The fields of both entities and of every event, grouped, with their operators."""
    return {
        "groups": [*FIELD_GROUPS, OTHER_GROUP],
        "entities": {e: _fields(catalogue.entity_fields(e)) for e in ("patient", "case")},
        "events": {name: {"group": src.group, "date_field": src.date_field,
                          "fields": _fields(catalogue.event_fields(name))}
                   for name, src in EVENT_SOURCES.items()},
        "ops": {str(t): sorted(ops, key=list(OP_LABELS).index) for t, ops in OPS_BY_TYPE.items()},
        "count_ops": list(COUNT_OPS),
        "op_labels": OP_LABELS,
        "date_help": DATE_VALUE_HELP,
    }  # fmt: skip


# A definition a person builds is a few kilobytes; these bound what one request may ask
# the app to parse, evaluate and write.
MAX_DRAFT_CHARS = 100_000
MAX_CONDITIONS = 500


def read_posted(text: str) -> dict[str, Any]:
    """A definition posted by the editor (JSON) or the text page (YAML, which JSON is),
    read exactly as the library reads a file."""
    if len(text) > MAX_DRAFT_CHARS:
        raise SegmentValidationError([Issue("draft", "", (
            f"the definition is {len(text):,} characters long; a definition is limited to "
            f"{MAX_DRAFT_CHARS:,}"))])  # fmt: skip
    raw = read_yaml(text, "draft")
    conditions, stack = 0, [raw]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            conditions += "field" in node or "events" in node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if conditions > MAX_CONDITIONS:
        raise SegmentValidationError([Issue("draft", "", (
            f"the definition has {conditions:,} conditions; a segment is limited to "
            f"{MAX_CONDITIONS:,}: split it into segments"))])  # fmt: skip
    return raw


def why_not_editable(seg: Segment | None, user: User, folder: Path | None) -> str | None:
    """None when `user` may save over `seg` in place (None: a new segment), or why not.

    The clinic's own segments live in `folder` (SEGMENTS_PATH). A segment there is saved
    by its owner, or by an admin when it is shared; the shipped ones are read only, and
    are saved under a new name.
    """
    if folder is None:
        return ("saving needs a folder for the clinic's own segments: set SEGMENTS_PATH "
                "and restart the web app")  # fmt: skip
    if seg is None:
        return None
    if seg.path.resolve().parent != folder.resolve():
        return "a shipped segment cannot be changed here; save it under a new name"
    owner = (seg.definition.owner or "").lower()
    if owner == user.email.lower() or (seg.definition.visibility == "shared" and user.is_admin):
        return None
    return (f"only its owner ({seg.definition.owner}) or an admin may change it; save it "
            "under a new name" if owner else "only an admin may change a shared segment "
            "without an owner; save it under a new name")  # fmt: skip
