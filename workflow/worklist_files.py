"""Which work lists exist: segments with a `workflow:` block, and named work lists.

A named work list is a YAML file (in `WORKLISTS_PATH`) that puts a workflow over an
existing segment, e.g. a billing team's own stages over a shared segment:

```yaml
# WORKLISTS_PATH/billing-chase.yaml  -> work list slug `billing-chase`
segment: outstanding-balances
visibility: private          # optional; defaults to the segment's
owner: kim@clinic.example    # optional; defaults to the segment's owner
workflow:
  stages: [To chase, Promised, Paid, Written off]
  terminal: [Paid, Written off]
```
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from core.yaml_files import YamlFileError, read_yaml_file
from segments.workflow_block import WorkflowSpec, WorkListInfo


class WorkListDefinitionError(ValueError):
    """A work list definition that cannot be used; the message names file and path."""


class NamedWorkList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segment: str
    name: str | None = None
    description: str = ""
    visibility: Literal["shared", "private"] | None = None
    owner: str | None = None
    workflow: WorkflowSpec


def _pydantic_message(file: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(
            f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]
        ).replace(".[", "[")
        lines.append(f"{file}: {path or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def worklist_from_segment(
    slug: str, definition: Any, file: str | Path | None = None
) -> WorkListInfo | None:
    """The work list a segment definition carries, or None when it has no `workflow:`.

    Accepts the segment model's own workflow object (anything with `model_dump()`) or a
    plain mapping, and validates it as a `WorkflowSpec`.
    """
    wf = getattr(definition, "workflow", None)
    if wf is None:
        return None
    raw = wf.model_dump() if hasattr(wf, "model_dump") else wf
    where = str(file) if file else f"segment {slug!r}"
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        message = _pydantic_message(where, exc).replace(f"{where}: ", f"{where}: workflow.")
        raise WorkListDefinitionError(message) from None
    try:
        return WorkListInfo(
            slug=slug,
            segment_slug=slug,
            owner=definition.owner,
            visibility=definition.visibility,
            mode=definition.mode,
            entity=definition.entity,
            spec=spec,
        )
    except ValidationError as exc:
        raise WorkListDefinitionError(_pydantic_message(where, exc)) from None


def read_named_worklist(path: Path, segments: dict[str, Any]) -> WorkListInfo:
    """Validate one named work list file against the segments it may refer to."""
    file = str(path)
    slug = path.name.removesuffix(".yaml").removesuffix(".yml")
    try:
        raw = read_yaml_file(path)
    except YamlFileError as exc:
        raise WorkListDefinitionError(str(exc)) from None
    if not isinstance(raw, dict):
        raise WorkListDefinitionError(f"{file}: expected a mapping with `segment:` and "
                                      "`workflow:` keys")  # fmt: skip
    try:
        named = NamedWorkList.model_validate(raw)
    except ValidationError as exc:
        raise WorkListDefinitionError(_pydantic_message(file, exc)) from None
    segment = segments.get(named.segment)
    if segment is None:
        # Only the segments this work list's owner may see are named.
        visible = [slug for slug, seg in segments.items() if seg.visibility != "private"
                   or (named.owner and seg.owner and named.owner.lower() == seg.owner.lower())]
        known = ", ".join(sorted(visible)) or "(none)"
        raise WorkListDefinitionError(
            f"{file}: segment: no segment named {named.segment!r}; known segments: {known}"
        )
    owner = named.owner or segment.owner
    visibility = named.visibility or segment.visibility
    if segment.visibility == "private" and (visibility != "private" or owner != segment.owner):
        raise WorkListDefinitionError(
            f"{file}: visibility: segment {named.segment!r} is private to its owner, so a "
            "work list over it must be private to the same owner"
        )
    try:
        return WorkListInfo(
            slug=slug,
            segment_slug=named.segment,
            owner=owner,
            visibility=visibility,
            mode=segment.mode,
            entity=segment.entity,
            spec=named.workflow,
        )
    except ValidationError as exc:
        raise WorkListDefinitionError(_pydantic_message(file, exc)) from None


@dataclass(frozen=True)
class WorkListSet:
    """The work lists that can be used, and the problems of the others by work-list slug
    (each message names its file). One bad definition never hides the others."""

    lists: dict[str, WorkListInfo]
    problems: dict[str, str]


def collect_worklists(
    segments: Iterable[tuple[str, Any, str | Path | None]],
    named_files: Iterable[Path] = (),
) -> WorkListSet:
    """All work lists from (slug, definition, file) triples and named work list files.

    A named work list may not reuse a slug that a segment's own work list already has.
    """
    by_slug: dict[str, Any] = {}
    result: dict[str, WorkListInfo] = {}
    problems: dict[str, str] = {}
    for slug, definition, file in segments:
        by_slug[slug] = definition
        try:
            info = worklist_from_segment(slug, definition, file)
        except WorkListDefinitionError as exc:
            problems[slug] = str(exc)
            continue
        if info is not None:
            result[slug] = info
    for path in named_files:
        slug = path.name.removesuffix(".yaml").removesuffix(".yml")
        try:
            info = read_named_worklist(path, by_slug)
        except WorkListDefinitionError as exc:
            problems[slug] = str(exc)
            continue
        if info.slug in result:
            problems[slug] = (
                f"{path}: work list slug {info.slug!r} is already taken by the segment "
                f"{result[info.slug].segment_slug!r}'s workflow; rename the file"
            )
            continue
        result[info.slug] = info
    return WorkListSet(result, problems)


def build_worklists(
    segments: Iterable[tuple[str, Any, str | Path | None]],
    named_files: Iterable[Path] = (),
) -> dict[str, WorkListInfo]:
    """`collect_worklists`, refusing the whole set if any definition has a problem."""
    found = collect_worklists(segments, named_files)
    if found.problems:
        raise WorkListDefinitionError("\n".join(found.problems.values()))
    return found.lists


def named_worklist_files(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def load_worklists(
    segment_folders: list[Path] | None = None, worklists_folder: Path | None = None
) -> dict[str, WorkListInfo]:
    """The usable work lists of the segment library (shipped + `SEGMENTS_PATH`) and
    `WORKLISTS_PATH`; `read_worklists` also tells the problems of the others."""
    return read_worklists(segment_folders, worklists_folder).lists


def read_worklists(
    segment_folders: list[Path] | None = None, worklists_folder: Path | None = None
) -> WorkListSet:
    """Work lists from the segment library (shipped + `SEGMENTS_PATH`) and `WORKLISTS_PATH`.

    Without the segments package (a deployment of the workflow stage alone) there are no
    definitions to read, and the set is empty. A segment file that does not load has no
    work list; its problems are the segments stage's to report.
    """
    try:
        from segments.validation import read_library
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.startswith("segments"):
            return WorkListSet({}, {})
        raise

    if segment_folders is None:
        from segments.library import library_folders

        segment_folders = library_folders(None)
    # Shape-only validation: the full field check needs the warehouse catalogue and is
    # the segments stage's job; a work list only needs the workflow block and metadata.
    library = read_library(segment_folders, None)
    return collect_worklists(
        ((s.slug, s.definition, s.path) for s in library.segments),
        named_worklist_files(worklists_folder),
    )


