"""The segment library and what runs a segment: shared by the Dagster assets and the CLI.

The library is the shipped `segments/definitions/` plus the user's `SEGMENTS_PATH`
folder. Materialising a segment evaluates it (or, for a snapshot segment, reads its frozen
list) and records the result in the warehouse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from core.settings import Settings
from core.warehouse import Warehouse
from segments.compiler import columns_read
from segments.evaluate import ROW, WarehouseFrames, evaluate
from segments.field_catalogue import (
    DEFAULT_CATALOGUE_PATH,
    ENTITY_TABLES,
    Catalogue,
    CatalogueError,
    catalogue_from_warehouse,
    load_catalogue,
)
from segments.members import (
    Consistency,
    MembershipChange,
    check_consistency,
    record_membership,
    refuse_earlier_day,
)
from segments.validation import Segment, SegmentLibrary, read_library

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

SHIPPED_DEFINITIONS = Path(__file__).resolve().parent / "definitions"


def library_folders(segments_path: Path | None) -> list[Path]:
    folders = [SHIPPED_DEFINITIONS]
    if segments_path is not None:
        if not segments_path.is_dir():
            raise FileNotFoundError(
                f"SEGMENTS_PATH {segments_path} is not a folder; point it at a folder of "
                "segment .yaml files or unset it"
            )
        folders.append(segments_path)
    return folders


def default_catalogue(duckdb_path: Path | None = None) -> Catalogue:
    """The marts' dbt docs; failing that, the marts as the warehouse has them."""
    if DEFAULT_CATALOGUE_PATH.exists():
        return load_catalogue(DEFAULT_CATALOGUE_PATH)
    if duckdb_path is not None and Path(duckdb_path).exists():
        with Warehouse.at(duckdb_path).connect(read_only=True) as con:
            return catalogue_from_warehouse(con)
    raise CatalogueError(
        f"no field catalogue: neither {DEFAULT_CATALOGUE_PATH} nor a warehouse at "
        f"{duckdb_path} exists"
    )


def load_library(settings: Settings, catalogue: Catalogue | None) -> SegmentLibrary:
    """The shipped definitions and SEGMENTS_PATH's; a bad file is an issue of the library,
    never a reason to lose the others."""
    return read_library(library_folders(settings.segments_path), catalogue)


def visible_to(segment: Segment, user: str | None) -> bool:
    """Private segments (and their members) are visible to their owner only."""
    d = segment.definition
    if d.visibility == "shared":
        return True
    return user is not None and d.owner is not None and user.lower() == d.owner.lower()


PREVIEW_SAMPLE_ROWS = 10
# Shown in a preview next to the fields the definition uses, so staff recognise people.
_PREVIEW_NAMES = {"patient": ("first_name", "last_name"), "case": ("name",)}


# What a caller needs beside the name, when the preview is a list to work through.
_CALLER_FIELDS = ("mobile", "email", "last_visit_date")


@dataclass(frozen=True)
class Preview:
    count: int
    sample: pl.DataFrame
    seconds: float
    # Every member's keys (patient_id, case_id), e.g. to compare with another version.
    members: pl.DataFrame


def preview_columns(segment: Segment, catalogue: Catalogue, caller: bool = False) -> list[str]:
    """Names, then the fields the definition reads: what a person checks in a preview.
    `caller`: the mobile, email and last visit too."""
    d = segment.definition
    fields = catalogue.entity_fields(d.entity)
    used = sorted(c for c in columns_read(d)[ENTITY_TABLES[d.entity]] if c in fields)
    names = [c for c in _PREVIEW_NAMES[d.entity] if c in fields]
    extra = [c for c in _CALLER_FIELDS if caller and c in fields]
    return [c for c in dict.fromkeys([*names, *extra, *used])
            if c not in ("patient_id", "case_id")]  # fmt: skip


def preview(
    segment: Segment, frames: WarehouseFrames, catalogue: Catalogue, as_of: date, timezone: str,
    caller: bool = False,
) -> Preview:
    """Count and sample of a segment, timed: what `audiences preview` shows.

    Time the evaluation only; the frames are expected to be loaded (`frames.prepare`).
    """
    table = ENTITY_TABLES[segment.definition.entity]
    columns = preview_columns(segment, catalogue, caller)
    # Load the display columns first: the row numbers below refer to this very frame.
    frames.frame(table, set(columns) | columns_read(segment.definition)[table])
    started = time.perf_counter()
    members = evaluate(segment.definition, frames, catalogue, as_of, timezone, with_rows=True)
    # Display columns for the sample only, fetched by row number rather than searched for.
    head = members.head(PREVIEW_SAMPLE_ROWS)
    details = frames.frame(table, columns).select(columns)[head[ROW]]
    sample = pl.concat([head.drop(ROW), details], how="horizontal")
    seconds = time.perf_counter() - started
    if segment.definition.entity == "patient":
        sample = sample.drop("case_id")
    return Preview(members.height, sample, seconds, members.drop(ROW))


def state_engine(state_db_url: str) -> Engine:
    """The state store with the segment tables migrated (imported only when needed)."""
    from segments.snapshots import state_engine as connect

    return connect(state_db_url)


@dataclass(frozen=True)
class Materialised:
    members: pl.DataFrame
    change: MembershipChange
    # For snapshot segments: whether this run froze a new list.
    snapshotted: bool
    consistency: Consistency


def current_members(
    segment: Segment,
    frames: WarehouseFrames,
    catalogue: Catalogue,
    as_of: date,
    timezone: str,
    engine: Engine,
    resnapshot: bool = False,
) -> tuple[pl.DataFrame, bool]:
    """Who is in the segment now; snapshot segments are evaluated only when (re)frozen."""
    from segments.snapshots import load_snapshot, save_snapshot

    if segment.definition.mode == "snapshot" and not resnapshot:
        frozen = load_snapshot(engine, segment.slug)
        if frozen is not None:
            return frozen, False
    members = evaluate(segment.definition, frames, catalogue, as_of, timezone)
    if segment.definition.mode == "snapshot":
        save_snapshot(engine, segment.slug, members, as_of)
        return members, True
    return members, False


def materialise(
    segment: Segment,
    frames: WarehouseFrames,
    catalogue: Catalogue,
    warehouse: Warehouse | Path,
    engine: Engine,
    as_of: date,
    timezone: str,
    resnapshot: bool = False,
) -> Materialised:
    with Warehouse.at(warehouse).connect() as con:
        # Refused before anything is evaluated or frozen (see record_membership).
        refuse_earlier_day(con, segment.slug, as_of)
    members, snapshotted = current_members(
        segment, frames, catalogue, as_of, timezone, engine, resnapshot
    )
    if segment.definition.mode == "snapshot" and not snapshotted:
        # A frozen list is not evaluated, but it is recorded as that day's membership: the
        # marts must still be of that day, so every segment of a day is of the same day.
        frames.frame(ENTITY_TABLES[segment.definition.entity], ["patient_id"])
        frames.require_day(as_of, f"segment {segment.definition.name!r}", timezone)
    with Warehouse.at(warehouse).connect() as con:
        change = record_membership(con, segment.slug, members, as_of)
        consistency = check_consistency(con, segment.slug)
    return Materialised(members, change, snapshotted, consistency)


def resnapshot(
    slug: str,
    as_of: str | None,
    settings: Settings,
    user: str | None = None,
) -> int:
    """Re-freeze a snapshot segment's list now (on purpose); returns the new member count.

    A private segment is re-frozen only for its owner (`user`). The warehouse membership
    follows at the segment's next materialisation.
    """
    from core.days import parse_as_of

    catalogue = default_catalogue(settings.duckdb_path)
    library = load_library(settings, catalogue)
    segment = library.get(slug)
    if segment is not None and not visible_to(segment, user):
        segment = None  # someone else's private segment does not exist for this user
    if segment is None:
        problems = library.problems_of(slug)
        if problems:
            raise ValueError("\n".join(str(p) for p in problems))
        raise KeyError(f"no segment {slug!r}; `audiences segments list` shows the slugs")
    if segment.definition.mode != "snapshot":
        raise ValueError(f"segment {slug!r} is dynamic; only snapshot segments are frozen")
    day = parse_as_of(as_of, settings.clinic_timezone)
    frames = WarehouseFrames(Warehouse(settings.duckdb_path, settings.duckdb_memory_limit))
    members = evaluate(segment.definition, frames, catalogue, day, settings.clinic_timezone)
    from segments.snapshots import save_snapshot

    save_snapshot(state_engine(settings.state_db_url), slug, members, day)
    return members.height
