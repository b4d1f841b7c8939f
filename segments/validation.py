"""Loading and validating segment files: every mistake named by file and path.

Two passes: pydantic checks the shape (keys, operators, nesting), then the definition is
checked against the field catalogue. All problems of a file are reported together, each
as `file: path: what is wrong; how to fix it`.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.yaml_files import YamlFileError, parse_yaml, read_yaml_file
from segments.dates import BadDate, parse_date_value
from segments.field_catalogue import ENTITY_TABLES, EVENT_SOURCES, Catalogue, Field, FieldType
from segments.model import (
    COUNT_OPS,
    EVENTS,
    FIELD_OPS,
    KNOWN_KEYS,
    UNION_TAGS,
    EventsCondition,
    FieldCondition,
    Group,
    SegmentDefinition,
)

SLUG_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Longer text values are not something a condition compares with (and would slow every
# evaluation of the segment down).
MAX_TEXT_VALUE = 1_000
# The warehouse's integers are 64-bit: a larger number cannot be compared with them.
MAX_INTEGER = 2**63 - 1

_NULL_OPS = {"is_null", "is_not_null"}
_ORDER_OPS = {"eq", "neq", "gt", "gte", "lt", "lte", "between"}
OPS_BY_TYPE: dict[FieldType, set[str]] = {
    FieldType.STRING: {"eq", "neq", "in", "not_in", "contains", "starts_with"} | _NULL_OPS,
    FieldType.INTEGER: _ORDER_OPS | {"in", "not_in"} | _NULL_OPS,
    FieldType.NUMBER: _ORDER_OPS | {"in", "not_in"} | _NULL_OPS,
    FieldType.DATE: _ORDER_OPS | _NULL_OPS,
    FieldType.TIMESTAMP: _ORDER_OPS | _NULL_OPS,
    FieldType.BOOLEAN: {"eq", "neq", "is_true", "is_false"} | _NULL_OPS,
    FieldType.LIST: {"contains_any", "contains_all"} | _NULL_OPS,
    FieldType.LOCATION: {"within_km"},
}
_NO_VALUE_OPS = {"is_null", "is_not_null", "is_true", "is_false"}
_TYPE_WORDS = {
    FieldType.STRING: "text",
    FieldType.INTEGER: "a whole number",
    FieldType.NUMBER: "a number",
    FieldType.DATE: "a date",
    FieldType.TIMESTAMP: "a timestamp",
    FieldType.BOOLEAN: "true / false",
    FieldType.LIST: "a list of text",
    FieldType.LOCATION: "a location",
}


@dataclass(frozen=True)
class Issue:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class SegmentValidationError(ValueError):
    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass(frozen=True)
class Segment:
    """A definition together with where it came from; the slug is its key everywhere."""

    slug: str
    path: Path
    definition: SegmentDefinition


def closest(name: str, candidates: list[str] | set[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, sorted(candidates), n=n, cutoff=0.5)


def _did_you_mean(name: str, candidates: list[str] | set[str]) -> str:
    near = closest(name, candidates)
    return f" (did you mean {' or '.join(near)}?)" if near else ""


def slug_of(path: Path) -> str:
    return path.name.removesuffix(".yaml").removesuffix(".yml")


# -- reading YAML ---------------------------------------------------------------------


def _yaml_issue(exc: YamlFileError) -> SegmentValidationError:
    return SegmentValidationError(
        [Issue(exc.file, f"line {exc.line}" if exc.line else "", exc.message)]
    )


def _as_mapping(doc: Any, file: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise SegmentValidationError(
            [Issue(file, "", "a segment file must be a mapping with at least `name` and `include`")]
        )
    return doc


def read_yaml(text: str, file: str) -> dict[str, Any]:
    try:
        return _as_mapping(parse_yaml(text, file), file)
    except YamlFileError as exc:
        raise _yaml_issue(exc) from None


def read_segment_file(path: Path) -> dict[str, Any]:
    try:
        return _as_mapping(read_yaml_file(path), str(path))
    except YamlFileError as exc:
        raise _yaml_issue(exc) from None


# -- pass 1: shape (pydantic) -----------------------------------------------------------


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part in UNION_TAGS:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pydantic_issue(file: str, err: dict[str, Any]) -> Issue:
    loc = tuple(err["loc"])
    path = _path(loc)
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        msg = f"unknown key {key!r}{_did_you_mean(key, KNOWN_KEYS)}; remove it or fix the spelling"
    elif kind == "missing":
        msg = f"missing required key {loc[-1]!r}; add it"
    elif kind == "literal_error":
        options = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        hint = _did_you_mean(str(given), options)
        msg = f"{given!r} is not a valid choice{hint}; use one of {', '.join(options)}"
    elif kind == "too_short" and path.endswith("conditions"):
        msg = "empty group: add at least one condition or remove the group"
    elif kind == "too_short":
        msg = f"{loc[-1]} is empty; list at least one"
    elif kind == "condition_kind":
        unknown = sorted(map(str, set(given) - set(KNOWN_KEYS))) if isinstance(given, dict) else []
        hints = "".join(f" Unknown key {k!r}{_did_you_mean(k, KNOWN_KEYS)}." for k in unknown)
        msg = (
            "not a condition: write {field, op, value}, {events, where, within, count} "
            "or a nested group {match, conditions}." + hints
        )
    elif kind in {"string_type", "list_type", "dict_type", "model_type", "model_attributes_type"}:
        wanted = {"string_type": "text", "list_type": "a list"}.get(kind, "a mapping")
        msg = f"expected {wanted}, got {given!r}"
    elif kind == "value_error":
        msg = str(err["msg"]).removeprefix("Value error, ")
        # Model-level checks name the offending key first (`terminal[0] 'C' is ...`):
        # move it into the path so the path points at the exact spot.
        first = re.match(r"^([a-z_]+)(\[\d+\])? ", msg)
        if first and first.group(1) in KNOWN_KEYS:
            path = f"{path}.{first.group(1)}{first.group(2) or ''}"
    else:
        msg = err["msg"]
    return Issue(file, path, msg)


# -- pass 2: against the catalogue -------------------------------------------------------


class _Checker:
    def __init__(self, file: str, catalogue: Catalogue | None) -> None:
        self.file = file
        self.catalogue = catalogue
        self.issues: list[Issue] = []

    def add(self, path: str, message: str) -> None:
        self.issues.append(Issue(self.file, path, message))

    def definition(self, d: SegmentDefinition, raw: dict[str, Any]) -> None:
        if d.visibility == "private" and not d.owner:
            self.add("owner", "a private segment needs an owner: the e-mail of who may see it")
        if self.catalogue is None:
            return
        fields = self.catalogue.entity_fields(d.entity)
        self.group(d.include, "include", fields, raw.get("include"))
        if d.exclude is not None:
            self.group(d.exclude, "exclude", fields, raw.get("exclude"))

    def group(self, g: Group, path: str, fields: dict[str, Field], raw: Any) -> None:
        raw_conditions = raw.get("conditions", []) if isinstance(raw, dict) else []
        for i, cond in enumerate(g.conditions):
            sub = f"{path}.conditions[{i}]"
            raw_cond = raw_conditions[i] if i < len(raw_conditions) else {}
            if isinstance(cond, Group):
                self.group(cond, sub, fields, raw_cond)
            elif isinstance(cond, EventsCondition):
                self.events(cond, sub, raw_cond)
            else:
                self.field_condition(cond, sub, fields)

    def events(self, c: EventsCondition, path: str, raw: Any) -> None:
        assert self.catalogue is not None
        fields = self.catalogue.event_fields(c.events)
        source = EVENT_SOURCES[c.events]
        if c.where is not None:
            self.group(c.where, f"{path}.where", fields, raw.get("where") if raw else None)
        if c.within is not None:
            if c.within.from_ is None and c.within.to is None:
                self.add(f"{path}.within", "give `from`, `to` or both (e.g. from: '-12 months')")
            for key, value in (("from", c.within.from_), ("to", c.within.to)):
                if value is not None:
                    self.date_value(value, f"{path}.within.{key}")
            if source.date_field not in fields:
                self.add(
                    f"{path}.within",
                    f"the catalogue has no {source.date_field} on {c.events}, "
                    "which the window applies to",
                )
        self.count(c, path)

    def count(self, c: EventsCondition, path: str) -> None:
        value = c.count.value
        vpath = f"{path}.count.value"
        if c.count.op == "between":
            if not (isinstance(value, list) and len(value) == 2):
                self.add(vpath, "between needs two counts, e.g. [2, 5]")
                return
            for j, v in enumerate(value):
                self.count_number(v, f"{vpath}[{j}]")
        else:
            self.count_number(value, vpath)

    def count_number(self, value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.add(path, f"{value!r} is not a count; write a whole number >= 0, e.g. 3")
        elif value > MAX_INTEGER:
            self.add(path, f"{str(value)[:30]}… is too large for a count; counts are limited "
                     f"to {MAX_INTEGER:,}")  # fmt: skip

    def date_value(self, value: Any, path: str) -> None:
        try:
            parse_date_value(value)
        except BadDate as exc:
            self.add(path, str(exc))

    def field_condition(self, c: FieldCondition, path: str, fields: dict[str, Field]) -> None:
        field = fields.get(c.field)
        if field is None:
            self.add(f"{path}.field", self.unknown_field(c.field, fields))
            return
        allowed = OPS_BY_TYPE[field.type]
        if c.op not in allowed:
            self.add(
                f"{path}.op",
                f"operator {c.op!r} does not apply to {c.field!r} ({_TYPE_WORDS[field.type]}); "
                f"use one of {', '.join(o for o in FIELD_OPS if o in allowed)}",
            )
            return
        has_value = "value" in c.model_fields_set
        vpath = f"{path}.value"
        if c.op in _NO_VALUE_OPS:
            if has_value:
                self.add(vpath, f"{c.op} takes no value; remove `value`")
            return
        if not has_value or c.value is None:
            self.add(vpath, f"{c.op} needs a value; add `value:`")
            return
        value = c.value
        if c.op in {"in", "not_in", "contains_any", "contains_all"}:
            if not isinstance(value, list) or not value:
                self.add(vpath, f"{c.op} needs a non-empty list, e.g. [a, b]")
                return
            element_type = FieldType.STRING if field.type is FieldType.LIST else field.type
            for j, v in enumerate(value):
                self.scalar(v, element_type, c.field, f"{vpath}[{j}]")
        elif c.op == "between":
            if not isinstance(value, list) or len(value) != 2:
                self.add(vpath, "between needs two bounds, e.g. ['-12 months', '-6 months']")
                return
            for j, v in enumerate(value):
                self.scalar(v, field.type, c.field, f"{vpath}[{j}]")
        elif c.op == "within_km":
            self.within_km(value, vpath)
        elif isinstance(value, list) and c.op in ("eq", "neq"):
            other = "in" if c.op == "eq" else "not_in"
            self.add(
                vpath,
                f"{c.op} compares with one value; to match any of several, use `op: {other}` "
                "with the list",
            )
        else:
            self.scalar(value, field.type, c.field, vpath)

    def unknown_field(self, name: str, fields: dict[str, Field]) -> str:
        msg = f"unknown field {name!r}{_did_you_mean(name, fields)}"
        assert self.catalogue is not None
        for entity in ENTITY_TABLES:
            other = self.catalogue.entity_fields(entity)
            if other is not fields and name in other and name not in fields:
                return f"{msg}; {name!r} is a field of {entity} segments (`entity: {entity}`)"
        return f"{msg}; the fields are listed in docs/segments.md and the marts' dbt docs"

    def within_km(self, value: Any, path: str) -> None:
        example = "{lat: -33.87, lon: 151.21, km: 5}"
        if not isinstance(value, dict) or set(value) != {"lat", "lon", "km"}:
            self.add(path, f"within_km needs exactly lat, lon and km, e.g. {example}")
            return
        limits = {"lat": (-90, 90), "lon": (-180, 180), "km": (0, 20_040)}
        for key, (lo, hi) in limits.items():
            v = value[key]
            ok = isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi
            if not ok or (key == "km" and v == 0):
                self.add(
                    f"{path}.{key}", f"{v!r} is not a valid {key}; use a number in [{lo}, {hi}]"
                )

    def scalar(self, value: Any, ftype: FieldType, field: str, path: str) -> None:
        if ftype in (FieldType.DATE, FieldType.TIMESTAMP):
            if isinstance(value, bool | int | float):
                self.add(path, f"{value!r} is not a date for {field!r}; write e.g. '-6 months'")
            else:
                self.date_value(value, path)
            return
        if ftype is FieldType.STRING:
            if isinstance(value, str) and len(value) > MAX_TEXT_VALUE:
                self.add(
                    path,
                    f"the value is {len(value):,} characters long; text values are limited to "
                    f"{MAX_TEXT_VALUE:,}",
                )
                return
            if not isinstance(value, str):
                shown = "true / false" if isinstance(value, bool) else repr(value)
                kind = "a number" if isinstance(value, int | float) else "not text"
                if isinstance(value, bool):
                    kind = "a boolean"
                if isinstance(value, date):
                    kind = "a date"
                self.add(path, f"{shown} is {kind} but {field!r} is text; quote it: '{value}'")
            return
        if ftype in (FieldType.INTEGER, FieldType.NUMBER):
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.add(
                    path,
                    f"{value!r} is not a number but {field!r} is {_TYPE_WORDS[ftype]}; "
                    "write it without quotes, e.g. 1000",
                )
            elif not math.isfinite(value):
                self.add(path, f"{value!r} is not a finite number; write a number such as 1000")
            elif isinstance(value, int) and abs(value) > MAX_INTEGER:
                self.add(path, f"{str(value)[:30]}… is too large; numbers are limited to "
                         f"±{MAX_INTEGER:,} (a 64-bit integer)")  # fmt: skip
            return
        if ftype is FieldType.BOOLEAN and not isinstance(value, bool):
            self.add(path, f"{value!r} is not true / false; {field!r} is a boolean (see is_true)")


def parse_definition(
    raw: dict[str, Any], file: str, catalogue: Catalogue | None
) -> SegmentDefinition:
    """Validate a definition already read from YAML; raises SegmentValidationError."""
    try:
        definition = SegmentDefinition.model_validate(raw)
    except ValidationError as exc:
        raise SegmentValidationError([_pydantic_issue(file, e) for e in exc.errors()]) from None
    checker = _Checker(file, catalogue)
    checker.definition(definition, raw)
    if checker.issues:
        raise SegmentValidationError(checker.issues)
    return definition


def load_segment(path: str | Path, catalogue: Catalogue | None, check_slug: bool = True) -> Segment:
    """Read and validate one segment file. Without a catalogue only the shape is checked.

    `check_slug=False` is for drafts (a preview): their file name is not a key anywhere.
    """
    path = Path(path)
    file = str(path)
    slug = slug_of(path)
    if check_slug and not SLUG_PATTERN.match(slug):
        raise SegmentValidationError(
            [Issue(file, "", f"file name {path.name!r} is not a valid slug; use lowercase "
                   "letters, digits and dashes, e.g. lapsed-physio-6-12mo.yaml")]
        )  # fmt: skip
    return Segment(slug, path, parse_definition(read_segment_file(path), file, catalogue))


def segment_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


@dataclass(frozen=True)
class SegmentLibrary:
    """Every definition of some folders: the valid ones, and the problems of the others.

    One bad file never hides the others: each consumer uses `segments` and reports
    `issues` (which name their file) as it sees fit.
    """

    segments: list[Segment]
    issues: list[Issue]
    # Slug → the problems of the file(s) that would define it.
    invalid: dict[str, list[Issue]]

    def get(self, slug: str) -> Segment | None:
        return next((s for s in self.segments if s.slug == slug), None)

    def problems_of(self, slug: str) -> list[Issue]:
        return self.invalid.get(slug, [])


def read_library(paths: list[Path], catalogue: Catalogue | None) -> SegmentLibrary:
    """Every definition in the given folders and files; two files with the same slug are
    a problem of the second one."""
    issues: list[Issue] = []
    invalid: dict[str, list[Issue]] = {}
    found: dict[str, Segment] = {}
    files = [f for p in paths for f in (segment_files(p) if p.is_dir() else [p])]
    for path in files:
        try:
            seg = load_segment(path, catalogue)
        except SegmentValidationError as exc:
            issues.extend(exc.issues)
            invalid.setdefault(slug_of(path), []).extend(exc.issues)
            continue
        other = found.get(seg.slug)
        if other is not None and other.path.resolve() != path.resolve():
            issue = Issue(str(path), "", f"slug {seg.slug!r} is already defined by "
                          f"{other.path}; rename one of the files")  # fmt: skip
            issues.append(issue)
            invalid.setdefault(seg.slug, []).append(issue)
            continue
        found[seg.slug] = seg
    return SegmentLibrary(list(found.values()), issues, invalid)


def load_segments(paths: list[Path], catalogue: Catalogue | None) -> list[Segment]:
    """Every definition in the given folders and files, all validated; all problems
    reported together. Two files with the same slug are an error."""
    library = read_library(paths, catalogue)
    if library.issues:
        raise SegmentValidationError(library.issues)
    return library.segments


__all__ = [
    "COUNT_OPS",
    "EVENTS",
    "Issue",
    "OPS_BY_TYPE",
    "Segment",
    "SegmentLibrary",
    "SegmentValidationError",
    "load_segment",
    "load_segments",
    "parse_definition",
    "read_library",
]
