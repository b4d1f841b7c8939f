"""The segment commands of the `audiences` CLI, as plain functions returning exit codes.

Patient rows are printed to stdout only, as the requested output; nothing about members
goes to logs.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from clinic_audiences.environment import current_settings
from core.days import parse_as_of, parse_day
from core.run_lock import WarehouseBusy
from core.settings import Settings
from core.tables import format_table
from core.warehouse import Warehouse, WrongDay, connect
from segments.evaluate import WarehouseError, WarehouseFrames
from segments.field_catalogue import ENTITY_TABLES, Catalogue, CatalogueError
from segments.library import (
    default_catalogue,
    load_library,
    preview,
    preview_columns,
    resnapshot,
    visible_to,
)
from segments.members import read_members
from segments.validation import Segment, SegmentValidationError, load_segment, load_segments


def _fail(message: str, code: int = 1) -> int:
    print(message)
    return code


def _catalogue(settings: Settings) -> Catalogue:
    return default_catalogue(settings.duckdb_path)


def cmd_validate(paths: list[str]) -> int:
    """Validate definition files or folders (default: the whole library). 0 = all valid."""
    settings = current_settings()
    try:
        catalogue = _catalogue(settings)
        if not paths:
            library = load_library(settings, catalogue)
            if library.issues:
                raise SegmentValidationError(library.issues)
            segments = library.segments
        else:
            segments = load_segments([Path(p) for p in paths], catalogue)
    except SegmentValidationError as exc:
        for issue in exc.issues:
            print(issue)
        return _fail(f"{len(exc.issues)} problem(s) found; nothing was run")
    except (CatalogueError, FileNotFoundError, WarehouseBusy) as exc:
        return _fail(str(exc), 2)
    for seg in segments:
        print(f"ok  {seg.slug}  ({seg.path})")
    print(f"{len(segments)} definition(s) valid")
    return 0


def cmd_preview(file: str, as_of: str | None) -> int:
    """Count, sample rows and evaluation time of a (possibly unsaved) definition file."""
    settings = current_settings()
    try:
        catalogue = _catalogue(settings)
        segment = load_segment(file, catalogue, check_slug=False)
        day = parse_as_of(as_of, settings.clinic_timezone)
    except SegmentValidationError as exc:
        for issue in exc.issues:
            print(issue)
        return _fail(f"{len(exc.issues)} problem(s) found; nothing was run")
    except (CatalogueError, ValueError, WarehouseBusy) as exc:
        return _fail(str(exc), 2)
    frames = WarehouseFrames(
        Warehouse(settings.duckdb_path, settings.duckdb_memory_limit), once=True
    )
    try:
        started = time.perf_counter()
        shown = {ENTITY_TABLES[segment.definition.entity]: set(preview_columns(segment, catalogue))}
        frames.prepare([segment.definition], shown)
        loaded = time.perf_counter() - started
        result = preview(segment, frames, catalogue, day, settings.clinic_timezone)
    except (WarehouseError, WarehouseBusy) as exc:
        return _fail(str(exc), 2)
    print(f"{segment.slug}: {segment.definition.name}  (as of {day.isoformat()})")
    print(f"members: {result.count}")
    print(
        f"evaluated in {result.seconds * 1000:.1f} ms "
        f"(reading the warehouse took {loaded * 1000:.0f} ms)"
    )
    print(format_table(result.sample))
    return 0


def _find_visible(settings: Settings, slug: str, user: str | None) -> Segment | None:
    """The segment `slug` if `user` may see it; a bad file of another segment is no
    obstacle, and this segment's own problems are reported."""
    library = load_library(settings, _catalogue(settings))
    seg = library.get(slug)
    if seg is not None and visible_to(seg, user):
        return seg
    if seg is None and library.problems_of(slug):
        raise SegmentValidationError(library.problems_of(slug))
    return None


def cmd_members(slug: str, fmt: str, user: str | None, as_of: str | None = None) -> int:
    """The members of a materialised segment on a day (default: its latest evaluation) as
    CSV or JSON on stdout."""
    settings = current_settings()
    if fmt not in ("csv", "json"):
        return _fail(f"--format {fmt!r} is not supported; use csv or json", 2)
    try:
        segment = _find_visible(settings, slug, user)
    except (SegmentValidationError, FileNotFoundError, CatalogueError, WarehouseBusy) as exc:
        return _fail(str(exc), 2)
    if segment is None:
        return _fail(f"no segment {slug!r}; `audiences segments list` shows the slugs")
    if not settings.duckdb_path.exists():
        return _fail(f"warehouse {settings.duckdb_path} does not exist; run the pipeline first")
    try:
        day = parse_day(as_of) if as_of else None
        with connect(settings.duckdb_path, read_only=True) as con:
            members = _membership_with_names(con, slug, day)
    except (WarehouseBusy, WrongDay, ValueError) as exc:
        return _fail(str(exc), 2)
    if members is None:
        return _fail(f"segment {slug!r} has not been materialised yet; run the pipeline first")
    if fmt == "csv":
        sys.stdout.write(members.write_csv())
    else:
        sys.stdout.write(json.dumps(members.to_dicts(), default=str, indent=1) + "\n")
    return 0


def _membership_with_names(
    con: duckdb.DuckDBPyConnection, slug: str, day: date | None
) -> pl.DataFrame | None:
    """The segment's members on `day` (default: the day of its latest evaluation), through
    the one membership reader, with names when the marts have them."""
    tables = {
        (r[0], r[1])
        for r in con.execute(
            "select table_schema, table_name from information_schema.tables"
        ).fetchall()
    }
    if ("segments", "segment_runs") not in tables:
        return None
    ran = con.execute(
        "select count(*) from segments.segment_runs where segment_slug = ?", [slug]
    ).fetchall()[0][0]
    if not ran:
        return None
    if day is None:
        day = con.execute(
            "select max(as_of) from segments.segment_runs where segment_slug = ?", [slug]
        ).fetchall()[0][0]
    members = read_members(con, [slug], day)
    con.register("day_members", members.to_arrow())
    names = ("p.first_name, p.last_name, " if ("marts", "patient_features") in tables else "")
    joined = ("left join marts.patient_features p using (patient_id) "
              if names else "")  # fmt: skip
    try:
        return con.sql(
            f"select m.patient_id, m.case_id, {names}h.entered_on as entered_at, "
            "cast(? as date) as as_of from day_members m "
            f"{joined}"
            "left join segments.membership_history h on h.segment_slug = m.segment_slug "
            "and h.patient_id = m.patient_id and h.case_id is not distinct from m.case_id "
            "and h.entered_on <= ? and (h.exited_on is null or h.exited_on > ?) "
            "order by m.patient_id, m.case_id",
            params=[day, day, day],
        ).pl()
    finally:
        con.unregister("day_members")


def file_visible_to(path: Path, user: str | None) -> bool:
    """Whether a definition file that does not validate may be named to `user`: when what
    it says of itself reads as shared, or as private to `user`. A file that cannot be read
    that far may be anyone's private segment, so it is not named."""
    from core.yaml_files import YamlFileError, read_yaml_file

    try:
        raw = read_yaml_file(path)
    except (YamlFileError, OSError):
        return False
    if not isinstance(raw, dict):
        return False
    if str(raw.get("visibility", "shared")).strip().lower() != "private":
        return True
    owner = raw.get("owner")
    return bool(user and isinstance(owner, str) and owner.strip().lower() == user.lower())


def cmd_segments_list(user: str | None) -> int:
    """The library's segments visible to `user` (others' private segments are left out)."""
    settings = current_settings()
    try:
        library = load_library(settings, None)
    except FileNotFoundError as exc:
        return _fail(str(exc), 2)
    segments = [s for s in library.segments if visible_to(s, user)]
    shown = [i for i in library.issues if file_visible_to(Path(i.file), user)]
    for issue in shown:
        print(f"warning: {issue}", file=sys.stderr)
    if len(shown) < len(library.issues):
        print(f"warning: {len(library.issues) - len(shown)} other definition file(s) have "
              "problems, not shown here as they may be private; `audiences validate` lists "
              "them", file=sys.stderr)  # fmt: skip
    counts: dict[str, int] = {}
    if settings.duckdb_path.exists():
        try:
            with connect(settings.duckdb_path, read_only=True) as con:
                has_table = con.execute(
                    "select count(*) from information_schema.tables "
                    "where table_schema = 'segments' and table_name = 'segment_runs'"
                ).fetchall()[0][0]
                if has_table:
                    # The latest run's count; a segment that never ran shows null.
                    counts = dict(
                        con.execute(
                            "select segment_slug, arg_max(members, recorded_at) "
                            "from segments.segment_runs group by 1"
                        ).fetchall()
                    )
        except WarehouseBusy as exc:
            print(f"warning: {exc}; member counts are not shown", file=sys.stderr)
    rows = [
        {
            "slug": s.slug,
            "name": s.definition.name,
            "entity": s.definition.entity,
            "mode": s.definition.mode,
            "visibility": s.definition.visibility,
            "department": s.definition.department or "",
            "members": counts.get(s.slug),
        }
        for s in segments
    ]
    table = pl.DataFrame(
        rows,
        schema={
            "slug": pl.String, "name": pl.String, "entity": pl.String, "mode": pl.String,
            "visibility": pl.String, "department": pl.String, "members": pl.Int64,
        },
    )  # fmt: skip
    print(format_table(table))
    return 0


def cmd_fields(entity: str | None) -> int:
    """The field catalogue: every field a segment can use, with its type, the operators
    its type allows and its description (from the marts' dbt docs)."""
    from segments.field_catalogue import ENTITY_TABLES, EVENT_SOURCES
    from segments.validation import OPS_BY_TYPE

    settings = current_settings()
    try:
        catalogue = _catalogue(settings)
    except (CatalogueError, WarehouseBusy) as exc:
        return _fail(str(exc), 2)
    if entity not in (None, *ENTITY_TABLES):
        return _fail(f"--entity {entity!r} is not one of: {', '.join(ENTITY_TABLES)}", 2)
    sections = [(f"{e} fields (entity: {e})", catalogue.entity_fields(e))
                for e in ENTITY_TABLES if entity in (None, e)]  # fmt: skip
    if entity is None:
        sections += [(f"events: {name} (fields of `where:` in an events condition)",
                      catalogue.event_fields(name)) for name in EVENT_SOURCES]  # fmt: skip
    for n, (title, fields) in enumerate(sections):
        rows = [
            {"field": f.name, "type": f.type.value,
             "operators": ", ".join(sorted(OPS_BY_TYPE.get(f.type, ()))),
             "description": f.description}
            for f in sorted(fields.values(), key=lambda f: f.name)
        ]  # fmt: skip
        print(("\n" if n else "") + title)
        print(format_table(pl.DataFrame(rows), max_width=70))
    return 0


def cmd_resnapshot(slug: str, as_of: str | None = None, user: str | None = None) -> int:
    """Re-freeze a snapshot segment's list on purpose (a private one only for its owner)."""
    try:
        count = resnapshot(slug, as_of, current_settings(), user=user)
    except (KeyError, ValueError, CatalogueError, WarehouseError, WarehouseBusy) as exc:
        return _fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
    print(f"{slug}: snapshot re-frozen with {count} member(s); the next run writes them")
    return 0


__all__ = [
    "cmd_fields",
    "cmd_members",
    "cmd_preview",
    "cmd_resnapshot",
    "cmd_segments_list",
    "cmd_validate",
]
