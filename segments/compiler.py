"""Compile a validated definition to polars expressions (never to SQL text).

A field condition becomes a boolean expression on the entity frame. An events condition
becomes a lazy `filter -> group_by -> agg(count)` over its event frame, joined back to the
entity frame as a count column that the condition then compares. Every leaf is made
two-valued (null -> false) so that `exclude` and `any` behave like the words say: a
patient with no value for a field does not match a condition on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import polars as pl

from segments.dates import resolve_date
from segments.field_catalogue import (
    ENTITY_KEYS,
    ENTITY_TABLES,
    EVENT_SOURCES,
    LOCATION_FIELD,
    Catalogue,
    Field,
    FieldType,
)
from segments.model import EventsCondition, FieldCondition, Group, SegmentDefinition

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class EventCount:
    """One events condition's aggregate, joined onto the entity frame as column `alias`.

    `exists`: the column is a boolean "has at least one matching event", enough for the
    commonest counts (at least one / none) and far cheaper than counting; else it is the
    number of matching events.
    """

    alias: str
    condition: EventsCondition
    join_key: str  # patient_id, or case_id for case segments over case-linked events
    exists: bool


# Counts that only ask whether there is any matching event: (op, value) -> wanted answer.
_EXISTENCE = {("gte", 1): True, ("gt", 0): True, ("neq", 0): True,
              ("eq", 0): False, ("lt", 1): False, ("lte", 0): False}  # fmt: skip


@dataclass
class Compiled:
    entity: str
    predicate: pl.Expr
    event_counts: list[EventCount] = field(default_factory=list)


@dataclass
class _Context:
    as_of: date
    timezone: str
    entity: str
    event_counts: list[EventCount]


def _as_date(expr: pl.Expr, ftype: FieldType, timezone: str) -> pl.Expr:
    """A date condition on a timestamp compares the timestamp's date in the clinic zone."""
    if ftype is FieldType.TIMESTAMP:
        return expr.dt.convert_time_zone(timezone).dt.date()
    return expr


def _literal(value: Any, ftype: FieldType, ctx: _Context) -> Any:
    if ftype in (FieldType.DATE, FieldType.TIMESTAMP):
        return resolve_date(value, ctx.as_of)
    return value


def _distance_km(lat: float, lon: float) -> pl.Expr:
    """Great-circle (haversine) distance from (lat, lon) to each row's coordinates."""
    lat1 = math.radians(lat)
    lat2 = pl.col("latitude").cast(pl.Float64).radians()
    dlat = lat2 - lat1
    dlon = pl.col("longitude").cast(pl.Float64).radians() - math.radians(lon)
    a = (dlat / 2).sin() ** 2 + math.cos(lat1) * lat2.cos() * (dlon / 2).sin() ** 2
    return 2 * EARTH_RADIUS_KM * a.sqrt().arcsin()


def compile_field_condition(c: FieldCondition, fdef: Field, ctx: _Context) -> pl.Expr:
    op, ftype = c.op, fdef.type
    if ftype is FieldType.LOCATION:
        v = c.value
        return _distance_km(v["lat"], v["lon"]) <= v["km"]
    # Null checks need no time-zone conversion of a timestamp; comparisons do.
    col = (
        pl.col(c.field)
        if op in ("is_null", "is_not_null")
        else (_as_date(pl.col(c.field), ftype, ctx.timezone))
    )
    if op == "is_null":
        if ftype is FieldType.LIST:
            return col.is_null() | (col.list.len() == 0)
        return col.is_null()
    if op == "is_not_null":
        if ftype is FieldType.LIST:
            return col.is_not_null() & (col.list.len() > 0)
        return col.is_not_null()
    if op == "is_true":
        return col
    if op == "is_false":
        return ~col
    if op in ("contains", "starts_with"):
        needle = str(c.value).lower()
        return col.map_batches(lambda s: _text_match(s, op, needle), return_dtype=pl.Boolean)
    if op in ("contains_any", "contains_all"):
        lowered = col.list.eval(pl.element().str.to_lowercase())
        parts = [lowered.list.contains(pl.lit(str(v).lower())) for v in c.value]
        return pl.any_horizontal(parts) if op == "contains_any" else pl.all_horizontal(parts)
    if op in ("in", "not_in"):
        values = [_literal(v, ftype, ctx) for v in c.value]
        if ftype in (FieldType.INTEGER, FieldType.NUMBER):
            # `in: [2, 2.5]` on whole numbers: compare as floats, as `eq` would.
            col, dtype = col.cast(pl.Float64), pl.Float64
        else:
            dtype = pl.String  # `in` applies to text and numbers only
        member = col.is_in(pl.Series(values, dtype=dtype).implode())
        return member if op == "in" else ~member
    if op == "between":
        lo, hi = sorted(_literal(v, ftype, ctx) for v in c.value)
        return col.is_between(pl.lit(lo), pl.lit(hi), closed="both")
    value = pl.lit(_literal(c.value, ftype, ctx))
    return {
        "eq": lambda: col == value,
        "neq": lambda: col != value,
        "gt": lambda: col > value,
        "gte": lambda: col >= value,
        "lt": lambda: col < value,
        "lte": lambda: col <= value,
    }[op]()


def compare_count(expr: pl.Expr, op: str, value: Any) -> pl.Expr:
    if op == "between":
        lo, hi = sorted(value)
        return expr.is_between(lo, hi, closed="both")
    return {
        "eq": lambda: expr == value,
        "neq": lambda: expr != value,
        "gt": lambda: expr > value,
        "gte": lambda: expr >= value,
        "lt": lambda: expr < value,
        "lte": lambda: expr <= value,
    }[op]()


def _text_match(s: pl.Series, op: str, needle: str) -> pl.Series:
    """Case-insensitive contains / starts_with. Low-cardinality text is held as Categorical
    (see evaluate.py): then each distinct value is tested once, not each row."""
    def test(text: pl.Series) -> pl.Series:
        lowered = text.str.to_lowercase()
        if op == "contains":
            return lowered.str.contains(needle, literal=True)
        return lowered.str.starts_with(needle)

    if s.dtype == pl.Categorical:
        values = s.drop_nulls().unique().cast(pl.String)
        hits = values.filter(test(values)).cast(s.dtype)
        # A missing value matches nothing (null, as the text test gives).
        return pl.select(pl.when(pl.lit(s).is_not_null())
                         .then(pl.lit(s).is_in(hits.implode()))).to_series()  # fmt: skip
    return test(s.cast(pl.String))


def _compile_group(g: Group, fields: dict[str, Field], ctx: _Context) -> pl.Expr:
    parts: list[pl.Expr] = []
    for cond in g.conditions:
        if isinstance(cond, Group):
            parts.append(_compile_group(cond, fields, ctx))
        elif isinstance(cond, EventsCondition):
            alias = f"__events_{len(ctx.event_counts)}"
            source = EVENT_SOURCES[cond.events]
            key = "case_id" if ctx.entity == "case" and source.has_case else "patient_id"
            value = cond.count.value
            wanted = _EXISTENCE.get((cond.count.op, value)) if isinstance(value, int) else None
            ctx.event_counts.append(EventCount(alias, cond, key, exists=wanted is not None))
            if wanted is None:
                parts.append(compare_count(pl.col(alias), cond.count.op, cond.count.value))
            else:
                parts.append(pl.col(alias) if wanted else ~pl.col(alias))
        else:
            expr = compile_field_condition(cond, fields[cond.field], ctx)
            parts.append(expr.fill_null(False))
    if len(parts) == 1:
        return parts[0]
    return pl.all_horizontal(parts) if g.match == "all" else pl.any_horizontal(parts)


def _has_events(cond: object) -> bool:
    if isinstance(cond, EventsCondition):
        return True
    return isinstance(cond, Group) and any(_has_events(c) for c in cond.conditions)


def compile_steps(
    d: SegmentDefinition, catalogue: Catalogue, as_of: date, timezone: str
) -> list[Compiled]:
    """The definition as a conjunction of steps that narrow the candidates one by one.

    A member must pass every step. All conditions without events form one step (one fused
    filter); each top-level condition with events (and an `exclude` with events) is a step
    of its own, so the caller can run the cheap ones first and look up events only for
    the candidates left. An `include` matching `any` is a single step.
    """
    fields = catalogue.entity_fields(d.entity)
    counter: list[EventCount] = []  # shared so that count column names stay unique

    def step(group: Group, negate: bool = False) -> Compiled:
        ctx = _Context(as_of, timezone, d.entity, counter)
        start = len(counter)
        expr = _compile_group(group, fields, ctx)
        return Compiled(d.entity, ~expr if negate else expr, counter[start:])

    if d.include.match == "all":
        plain = [c for c in d.include.conditions if not _has_events(c)]
        with_events = [c for c in d.include.conditions if _has_events(c)]
    else:
        plain, with_events = [], [d.include]
    steps: list[Compiled] = []
    parts = [step(Group(match="all", conditions=plain))] if plain else []
    if d.exclude is not None and not _has_events(d.exclude):
        parts.append(step(d.exclude, negate=True))
    if parts:
        fused = pl.all_horizontal([p.predicate for p in parts]) if len(parts) > 1 else None
        steps.append(Compiled(d.entity, fused if fused is not None else parts[0].predicate))
    for cond in with_events:
        group = cond if isinstance(cond, Group) else Group(match="all", conditions=[cond])
        steps.append(step(group))
    if d.exclude is not None and _has_events(d.exclude):
        steps.append(step(d.exclude, negate=True))
    return steps


def event_filter(
    ev: EventsCondition, catalogue: Catalogue, as_of: date, timezone: str
) -> pl.Expr | None:
    """The row filter of an events condition: its `where` group and `within` window."""
    ctx = _Context(as_of, timezone, "patient", [])
    parts: list[pl.Expr] = []
    if ev.where is not None:
        parts.append(_compile_group(ev.where, catalogue.event_fields(ev.events), ctx))
    if ev.within is not None:
        bounds = [resolve_date(v, as_of) for v in (ev.within.from_, ev.within.to) if v is not None]
        date_col = pl.col(EVENT_SOURCES[ev.events].date_field)
        if len(bounds) == 2:
            lo, hi = sorted(bounds)
            parts.append(date_col.is_between(pl.lit(lo), pl.lit(hi), closed="both"))
        elif ev.within.from_ is not None:
            parts.append(date_col >= pl.lit(bounds[0]))
        else:
            parts.append(date_col <= pl.lit(bounds[0]))
    if not parts:
        return None
    return pl.all_horizontal(parts).fill_null(False)


# -- which columns a definition reads ----------------------------------------------------


def _group_fields(g: Group, out: set[str], events: dict[str, set[str]], entity: str) -> None:
    for cond in g.conditions:
        if isinstance(cond, Group):
            _group_fields(cond, out, events, entity)
        elif isinstance(cond, EventsCondition):
            cols = events.setdefault(cond.events, set())
            # The key the events are counted on (see _compile_group).
            by_case = entity == "case" and EVENT_SOURCES[cond.events].has_case
            cols.add("case_id" if by_case else "patient_id")
            if cond.within is not None:
                cols.add(EVENT_SOURCES[cond.events].date_field)
            if cond.where is not None:
                _group_fields(cond.where, cols, {}, entity)
        elif cond.field == LOCATION_FIELD:
            out.update(("latitude", "longitude"))
        else:
            out.add(cond.field)


def columns_read(d: SegmentDefinition) -> dict[str, set[str]]:
    """Mart table -> the columns a definition reads (for loading and for asset deps)."""
    entity_cols = set(ENTITY_KEYS[d.entity])
    events: dict[str, set[str]] = {}
    _group_fields(d.include, entity_cols, events, d.entity)
    if d.exclude is not None:
        _group_fields(d.exclude, entity_cols, events, d.entity)
    out = {ENTITY_TABLES[d.entity]: entity_cols}
    for name, cols in events.items():
        out[EVENT_SOURCES[name].table] = cols
    return out


def condition_expr(
    c: FieldCondition, fdef: Field, as_of: date, timezone: str, entity: str = "patient"
) -> pl.Expr:
    """One field condition as a boolean expression (null counts as not passing), the same
    one evaluation uses: what an explanation evaluates for a single member."""
    return compile_field_condition(c, fdef, _Context(as_of, timezone, entity, [])).fill_null(False)
