"""Segment assets: one per definition file, downstream of the marts it reads.

An asset factory over the segment library (the shipped definitions and `SEGMENTS_PATH`),
partitioned by as-of day. Each asset evaluates its
segment with the one evaluation function (`segments.evaluate`) and records membership and
history in the warehouse; the logic lives in `segments.library`, this module only wires.
"""

import hashlib
import json
import re
from functools import cache
from importlib import metadata
from pathlib import Path

import dagster as dg
import polars as pl

import core
import segments
from core.warehouse import Warehouse, WrongDay
from orchestration import dbt_builds
from orchestration.resources import (
    PROGRESS,
    ClinicSettingsResource,
    StateStoreResource,
    WarehouseResource,
    as_of_day,
    daily_partitions,
    key_part,
)
from segments.compiler import columns_read
from segments.evaluate import WarehouseError, WarehouseFrames
from segments.field_catalogue import Catalogue
from segments.library import (
    default_catalogue,
    library_folders,
    materialise,
)
from segments.members import (
    Consistency,
    check_consistency,
    evaluated_from,
    read_members,
    remember_inputs,
)
from segments.validation import (
    Issue,
    Segment,
    SegmentValidationError,
    load_segment,
    segment_files,
    slug_of,
)

SAMPLE_ROWS = 10
HISTORY_CHECK = "membership_matches_history"

# Marts loaded once per run and shared by every segment asset of that run (in-process
# executor); a new run reloads, so segments always see the marts that run built.
_frames_by_run: dict[tuple[str, str], WarehouseFrames] = {}


class SegmentRunConfig(dg.Config):
    # Set to re-freeze a snapshot segment's list in this run, on purpose.
    resnapshot: bool = False


def group_name_for(department: str | None) -> str:
    """A Dagster group name (letters, digits, underscores) from a department tag."""
    if not department:
        return "segments"
    return re.sub(r"[^A-Za-z0-9_]+", "_", department).strip("_") or "segments"


def _frames_for(
    warehouse: Warehouse, run_id: str, segments: list[Segment], catalogue: Catalogue
) -> WarehouseFrames:
    key = (str(warehouse.path), run_id)
    if key not in _frames_by_run:
        _frames_by_run.clear()
        frames = WarehouseFrames(warehouse)
        # One read of every column the run's valid segments need; invalid ones fail alone.
        frames.prepare([s.definition for s in segments if _is_valid(s, catalogue)])
        _frames_by_run[key] = frames
    return _frames_by_run[key]


# The dbt asset whose build the marts segments read come from.
WAREHOUSE_BUILD = "warehouse_dbt_assets"


@cache
def _evaluating_code() -> str:
    """A digest of the code that evaluates and records segments, and of polars."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"polars=={metadata.version('polars')}\0".encode())
    for package in (segments, core):
        for path in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def segment_inputs(
    con, segment: Segment, as_of: str, timezone: str  # noqa: ANN001 - duckdb connection
) -> str | None:
    """What a dynamic segment's evaluation is made from: the recorded build of the marts
    (orchestration/dbt_builds.py), the definition as loaded, the day, the time zone and the
    evaluating code. None when the marts' build is not recorded (built by hand, a subset,
    or a build that failed): then it is evaluated."""
    build = dbt_builds.recorded(con, WAREHOUSE_BUILD)
    if build is None:
        return None
    # The definition as it was loaded and is evaluated (not the file read again).
    payload = json.dumps([build.fingerprint, build.run_id, segment.definition.model_dump_json(),
                          as_of, timezone, _evaluating_code()])  # fmt: skip
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def _is_valid(segment: Segment, catalogue: Catalogue) -> bool:
    try:
        load_segment(segment.path, catalogue)
    except SegmentValidationError:
        return False
    return True


def _sample_markdown(members: pl.DataFrame) -> str:
    """Ids only: asset metadata is stored in the event log, so no names or contacts."""
    if members.is_empty():
        return "No members."
    sample = members.head(SAMPLE_ROWS)
    lines = ["| patient_id | case_id |", "|---|---|"]
    lines += [f"| {p} | {c or ''} |" for p, c in sample.select("patient_id", "case_id").rows()]
    if members.height > SAMPLE_ROWS:
        lines.append(f"\n… and {members.height - SAMPLE_ROWS} more")
    return "\n".join(lines)


def _mart_deps(segment: Segment | None) -> list[dg.AssetKey]:
    if segment is None:
        return [dg.AssetKey(["marts", "patient_features"])]
    return [dg.AssetKey(["marts", table]) for table in sorted(columns_read(segment.definition))]


def build_segment_asset(
    slug: str, path: Path, segment: Segment | None, problems: list[Issue], library: list[Segment],
    partitions: dg.PartitionsDefinition,
) -> dg.AssetsDefinition:
    """The asset of one definition file. A file that does not validate still gets its asset,
    which fails with the file's problems, so one typo does not take the code location down."""
    d = segment.definition if segment else None
    department = (d.department or (d.workflow.department if d.workflow else None)) if d else None
    description = (d.description or d.name) if d else f"{path.name} (invalid definition)"

    @dg.asset(
        key=dg.AssetKey(["segments", slug]),
        deps=_mart_deps(segment),
        group_name=group_name_for(department),
        description=description,
        kinds={"polars", "duckdb"},
        tags={"department": group_name_for(department)} if department else None,
        metadata={"definition_file": str(path)},
        partitions_def=partitions,
        pool="warehouse",
        check_specs=[
            dg.AssetCheckSpec(
                HISTORY_CHECK,
                asset=dg.AssetKey(["segments", slug]),
                description="Every current member has exactly one open history interval, "
                "no member is listed twice, and nobody else has an open interval.",
            )
        ],
    )
    def _segment_asset(
        context: dg.AssetExecutionContext,
        config: SegmentRunConfig,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
        state_store: StateStoreResource,
    ) -> dg.MaterializeResult:
        if problems:
            raise dg.Failure(description="\n".join(str(p) for p in problems))
        assert segment is not None
        duckdb_path = Path(warehouse.duckdb_path)
        try:
            catalogue = default_catalogue(duckdb_path)
            checked = load_segment(segment.path, catalogue)
        except SegmentValidationError as exc:
            raise dg.Failure(description=str(exc)) from None
        as_of = as_of_day(context)
        wh = Warehouse.at(warehouse.duckdb_path, warehouse.memory_limit or None)
        inputs = None
        if checked.definition.mode == "dynamic" and not config.resnapshot:
            with wh.connect() as con:
                inputs = segment_inputs(con, checked, as_of.isoformat(), settings.clinic_timezone)
                if inputs is not None and evaluated_from(con, checked.slug, as_of) == inputs:
                    return _reused(context, con, checked.slug, as_of)
        try:
            frames = _frames_for(wh, context.run_id, library, catalogue)
            result = materialise(
                checked,
                frames,
                catalogue,
                wh,
                state_store.engine(),
                as_of,
                settings.clinic_timezone,
                resnapshot=config.resnapshot,
            )
        except (WarehouseError, WrongDay) as exc:
            raise dg.Failure(description=str(exc)) from None
        if inputs is not None and result.consistency.ok:
            with wh.connect() as con:
                remember_inputs(con, checked.slug, as_of, inputs)
        change = result.change
        # Counts only in the log: who is in a segment is patient data.
        context.log.info(
            f"{slug}: {change.members} member(s), {change.entered} entered, "
            f"{change.exited} exited (as of {as_of.isoformat()})"
        )
        metadata: dict[str, object] = {
            "members": dg.MetadataValue.int(change.members),
            "entered": dg.MetadataValue.int(change.entered),
            "exited": dg.MetadataValue.int(change.exited),
            "as_of": dg.MetadataValue.text(as_of.isoformat()),
            "previous_as_of": dg.MetadataValue.text(
                change.previous_as_of.isoformat() if change.previous_as_of else "first run"
            ),
            "mode": dg.MetadataValue.text(checked.definition.mode),
            "sample": dg.MetadataValue.md(_sample_markdown(result.members)),
        }
        if checked.definition.mode == "snapshot":
            metadata["snapshot_frozen_this_run"] = dg.MetadataValue.bool(result.snapshotted)
        return dg.MaterializeResult(
            metadata=metadata, check_results=[_history_check(result.consistency)]
        )

    return _segment_asset


def _history_check(c: Consistency) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=HISTORY_CHECK,
        passed=c.ok,
        metadata={
            "duplicate_members": c.duplicate_members,
            "members_without_open_interval": c.members_without_open_interval,
            "open_intervals_of_non_members": c.open_intervals_of_non_members,
        },
    )


def _reused(
    context: dg.AssetExecutionContext, con, slug: str, as_of  # noqa: ANN001
) -> dg.MaterializeResult:
    """The segment's membership of `as_of`, already evaluated from the same inputs: what
    evaluating it again would report (the same members; nobody entered or left)."""
    members = read_members(con, [slug], as_of)
    context.log.info(
        f"{PROGRESS}not evaluated again: its membership of {as_of} was evaluated from the "
        "same marts build, definition and code"
    )
    c = check_consistency(con, slug)
    metadata: dict[str, object] = {
        "members": dg.MetadataValue.int(members.height),
        "entered": dg.MetadataValue.int(0),
        "exited": dg.MetadataValue.int(0),
        "as_of": dg.MetadataValue.text(as_of.isoformat()),
        "previous_as_of": dg.MetadataValue.text(as_of.isoformat()),
        "mode": dg.MetadataValue.text("dynamic"),
        "sample": dg.MetadataValue.md(_sample_markdown(members)),
        "evaluation": dg.MetadataValue.text("not run: inputs unchanged since its last one"),
    }
    return dg.MaterializeResult(metadata=metadata, check_results=[_history_check(c)])


def build_segment_assets(
    folders: list[Path], partitions: dg.PartitionsDefinition | None = None
) -> list[dg.AssetsDefinition]:
    """One asset per definition file in `folders`. Duplicate slugs are refused here,
    since two files cannot both own `segments/<slug>`."""
    entries: list[tuple[str, Path, Segment | None, list[Issue]]] = []
    seen: dict[str, Path] = {}
    for folder in folders:
        for path in segment_files(folder):
            slug = slug_of(path)
            if slug in seen:
                raise SegmentValidationError(
                    [Issue(str(path), "", f"slug {slug!r} is already defined by {seen[slug]}; "
                           "rename one of the files")]
                )  # fmt: skip
            seen[slug] = path
            try:
                entries.append((slug, path, load_segment(path, None), []))
            except SegmentValidationError as exc:
                entries.append((slug, path, None, exc.issues))
    library = [seg for _, _, seg, _ in entries if seg is not None]
    # A file name Dagster cannot carry has failed its slug check: its asset fails with it.
    return [
        build_segment_asset(key_part(slug), p, seg, probs, library,
                            partitions or daily_partitions())
        for slug, p, seg, probs in entries
    ]


def build_segment_defs(
    segments_path: Path | None = None, partitions: dg.PartitionsDefinition | None = None
) -> dg.Definitions:
    return dg.Definitions(assets=build_segment_assets(library_folders(segments_path), partitions))
