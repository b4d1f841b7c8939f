"""Why is this patient in a segment, or not: the rule tree evaluated for one member.

Every group and condition of the definition is evaluated for one patient (or each of a
patient's cases, for a case segment) with the expressions evaluation itself uses, and
reports pass or fail with the values that decided it: the field's value, or the number of
matching events against the count asked for. The member's verdict is the include group
passing and the exclude group (if any) not passing, which is exactly membership.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

import polars as pl

from segments.compiler import columns_read, compare_count, condition_expr, event_filter
from segments.evaluate import WarehouseFrames
from segments.field_catalogue import (
    ENTITY_TABLES,
    EVENT_SOURCES,
    LOCATION_FIELD,
    Catalogue,
)
from segments.model import EventsCondition, FieldCondition, Group, SegmentDefinition


@dataclass
class Node:
    """One group or condition: what it asks, whether it passed, and why."""

    kind: str  # "group", "field" or "events"
    label: str
    passed: bool
    detail: str = ""
    children: list[Node] = field(default_factory=list)


@dataclass
class Explanation:
    patient_id: str
    case_id: str | None
    found: bool
    member: bool
    include: Node | None
    exclude: Node | None

    @property
    def excluded_by(self) -> list[Node]:
        """The exclude conditions that knocked the member out (when include passed)."""
        if self.exclude is None or not self.exclude.passed:
            return []
        return [c for c in self.exclude.children if c.passed] or [self.exclude]


def _value_text(value: Any) -> str:
    if value is None:
        return "no value"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "an empty list"
    return str(value)


def _field_label(c: FieldCondition) -> str:
    if c.op in ("is_null", "is_not_null", "is_true", "is_false"):
        return f"{c.field} {c.op}"
    return f"{c.field} {c.op} {c.value!r}"


class _Explainer:
    def __init__(self, d: SegmentDefinition, frames: WarehouseFrames, catalogue: Catalogue,
                 as_of: date, timezone: str, row: pl.DataFrame) -> None:  # fmt: skip
        self.d, self.frames, self.catalogue = d, frames, catalogue
        self.as_of, self.timezone, self.row = as_of, timezone, row
        self.fields = catalogue.entity_fields(d.entity)
        self.read = columns_read(d)

    def group(self, g: Group) -> Node:
        children = [self.condition(c) for c in g.conditions]
        passed = (all if g.match == "all" else any)(c.passed for c in children)
        return Node("group", f"match {g.match}", passed, children=children)

    def condition(self, c: object) -> Node:
        if isinstance(c, Group):
            return self.group(c)
        if isinstance(c, EventsCondition):
            return self.events(c)
        assert isinstance(c, FieldCondition)
        expr = condition_expr(c, self.fields[c.field], self.as_of, self.timezone, self.d.entity)
        passed = bool(self.row.select(expr).item())
        if c.field == LOCATION_FIELD:
            shown = f"at {_value_text(self.row['latitude'][0])}, {_value_text(self.row['longitude'][0])}"  # noqa: E501
        else:
            shown = f"is {_value_text(self.row[c.field][0])}"
        return Node("field", _field_label(c), passed, f"{c.field} {shown}")

    def events(self, c: EventsCondition) -> Node:
        source = EVENT_SOURCES[c.events]
        key = "case_id" if self.d.entity == "case" and source.has_case else "patient_id"
        events = self.frames.frame(source.table, self.read[source.table] | {key})
        joined = self.frames.join_key(key)  # the hashed id, as evaluation joins them
        mine = events.filter(pl.col(joined) == self.row[joined][0])
        keep = event_filter(c, self.catalogue, self.as_of, self.timezone)
        count = (mine.filter(keep) if keep is not None else mine).height
        passed = bool(pl.select(compare_count(pl.lit(count), c.count.op, c.count.value)).item())
        where = " matching its conditions" if c.where is not None or c.within is not None else ""
        label = f"{c.events}: count {c.count.op} {c.count.value}"
        return Node("events", label, passed, f"{count} {c.events}{where}")


def explain(
    d: SegmentDefinition, frames: WarehouseFrames, catalogue: Catalogue, as_of: date,
    timezone: str, patient_id: str,
) -> list[Explanation]:  # fmt: skip
    """The explanation for a patient: one for a patient segment, one per case of the
    patient for a case segment (none when the patient has no case); a patient the marts
    do not hold is one explanation with `found` false."""
    table = ENTITY_TABLES[d.entity]
    keys = {"patient_id", "case_id"} if d.entity == "case" else {"patient_id"}
    columns = columns_read(d)[table] | keys
    rows = frames.frame(table, columns).filter(pl.col("patient_id") == patient_id)
    frames.require_day(as_of, f"segment {d.name!r}", timezone)
    if rows.is_empty():
        if d.entity == "case":
            return []
        return [Explanation(patient_id, None, False, False, None, None)]
    out = []
    for i in range(rows.height):
        row = rows.slice(i, 1)
        ex = _Explainer(d, frames, catalogue, as_of, timezone, row)
        include = ex.group(d.include)
        exclude = ex.group(d.exclude) if d.exclude is not None else None
        member = include.passed and not (exclude.passed if exclude else False)
        case_id = row["case_id"][0] if d.entity == "case" else None
        out.append(Explanation(patient_id, case_id, True, member, include, exclude))
    return out
