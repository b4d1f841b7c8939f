"""Ingest assets: the extract's manifest, then one asset per raw entity, each with its
rows-in = loaded + rejected check.

Thin wrappers around `ingest.load` and `ingest.guard`; the logic lives there.
"""

import os
import re
from pathlib import Path

import dagster as dg

from ingest.csv_reader import ExtractFileError
from ingest.entities import ENTITIES, Entity
from ingest.guard import DEFAULT_MAX_DROP, ShrinkRule, check_extract, guarded_swap
from ingest.inputs import count_input_rows
from ingest.load import load_entity
from ingest.warehouse import connect, scalar
from orchestration.resources import (
    AS_OF_TAG,
    ClinicSettingsResource,
    WarehouseResource,
    run_as_of,
)

# Run tags that carry what the sensor or CLI chose for this run (AS_OF_TAG: resources).
EXTRACTS_TAG = "clinic-audiences/extracts_dir"
FORMAT_TAG = "clinic-audiences/format"
# Entities (comma-separated, or 'all') whose drop against the last accepted load this run
# accepts on purpose (`audiences run --accept-shrink`).
ACCEPT_SHRINK_TAG = "clinic-audiences/accept_shrink"
MANIFEST = dg.AssetKey(["raw", "extract_manifest"])

DATED_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def latest_dated_folder(root: Path) -> Path | None:
    """The newest `YYYY-MM-DD` folder under the extracts root, if any."""
    if not root.is_dir():
        return None
    dated = sorted(p for p in root.iterdir() if p.is_dir() and DATED_FOLDER.match(p.name))
    return dated[-1] if dated else None


def resolve_extract(tags: dict[str, str], settings: ClinicSettingsResource) -> tuple[Path, str]:
    """Which extract folder and format this run reads: run tags, then settings, then the
    newest dated folder under the extracts root."""
    fmt = tags.get(FORMAT_TAG) or settings.extract_format
    chosen = tags.get(EXTRACTS_TAG) or settings.extracts_dir
    if chosen:
        return Path(chosen), fmt
    latest = latest_dated_folder(Path(settings.extracts_root))
    if latest is None:
        raise dg.Failure(
            description=(
                f"No extract to ingest: no folder given and no YYYY-MM-DD folder under "
                f"{settings.extracts_root}. Run `audiences run --extracts DIR` "
                "or set EXTRACTS_ROOT."
            )
        )
    return latest, fmt


def top_reasons_markdown(con, ent: Entity, limit: int = 5) -> str:
    """The commonest rejection reasons with values masked (no patient data in metadata)."""
    rows = con.sql(
        f"""
        select regexp_replace(reason, '''[^'']*''', '…', 'g') as reason, count(*) as rows
        from raw.{ent.name}__rejected group by 1 order by 2 desc limit {limit}
        """
    ).fetchall()
    if not rows:
        return "No rejected rows."
    lines = ["| reason | rows |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in rows]
    return "\n".join(lines)


def shrink_rule(tags: dict[str, str]) -> ShrinkRule:
    """What this run accepts: the run's accept-shrink tag, and the allowed drop from
    INGEST_MAX_DROP (a fraction, default 0.5)."""
    raw = os.environ.get("INGEST_MAX_DROP")
    try:
        max_drop = float(raw) if raw else DEFAULT_MAX_DROP
        return ShrinkRule.parse(tags.get(ACCEPT_SHRINK_TAG), max_drop)
    except ValueError as err:
        raise dg.Failure(description=f"INGEST_MAX_DROP / accept-shrink: {err}") from None


@dg.asset(
    key=MANIFEST,
    group_name="ingest",
    description="What the new extract holds: rows per entity, compared with the last accepted "
    "load. Refuses an extract that empties a required entity or shrinks one by more than half "
    "(a failed export) before any raw table is replaced.",
    kinds={"duckdb"},
    pool="warehouse",
)
def extract_manifest(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    settings: ClinicSettingsResource,
) -> dg.MaterializeResult:
    tags = dict(context.run.tags)
    extract_dir, fmt = resolve_extract(tags, settings)
    rule = shrink_rule(tags)
    try:
        with connect(warehouse.duckdb_path) as con:
            counts = check_extract(con, extract_dir, fmt, rule)
    except ExtractFileError as err:
        raise dg.Failure(description=str(err)) from None
    lines = ["| entity | rows |", "|---|---:|"] + [f"| {e} | {n:,} |" for e, n in counts.items()]
    return dg.MaterializeResult(
        metadata={
            "extract": str(extract_dir),
            "format": fmt,
            "accepted_shrink": ", ".join(sorted(rule.accepted)) or "(none)",
            "rows": dg.MetadataValue.md("\n".join(lines)),
        }
    )


def build_ingest_asset(ent: Entity) -> dg.AssetsDefinition:
    key = dg.AssetKey(["raw", ent.name])

    @dg.asset(
        key=key,
        group_name="ingest",
        description=f"{ent.description} Loaded from the extract into raw.{ent.name}; bad rows "
        f"go to raw.{ent.name}__rejected with a reason.",
        kinds={"duckdb", "polars"},
        deps=[MANIFEST],
        pool="warehouse",
        check_specs=[
            dg.AssetCheckSpec(
                "rows_in_equal_loaded_plus_rejected",
                asset=key,
                blocking=True,
                description="Every input row is loaded or rejected with a reason.",
            )
        ],
    )
    def _ingest(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
    ):
        tags = dict(context.run.tags)
        extract_dir, fmt = resolve_extract(tags, settings)
        rule = shrink_rule(tags)
        as_of = run_as_of(tags, settings)
        try:
            # Counted first, from the files, independently of the loader: the load is
            # swapped in only if the two agree.
            rows_in = count_input_rows(extract_dir, ent, fmt)
            with connect(warehouse.duckdb_path) as con:
                result = load_entity(
                    con, ent.name, extract_dir, fmt, as_of=as_of,
                    before_swap=guarded_swap(ent, rows_in, rule, as_of),
                )  # fmt: skip
                loaded_count = scalar(con, f"select count(*) from raw.{ent.name}")
                rejected_count = scalar(con, f"select count(*) from raw.{ent.name}__rejected")
                reasons = top_reasons_markdown(con, ent)
        except ExtractFileError as err:
            raise dg.Failure(description=str(err)) from None
        yield dg.MaterializeResult(
            metadata={
                "source": result.source or "(absent: empty entity)",
                "rows_in": rows_in,
                "rows_loaded": loaded_count,
                "rows_rejected": rejected_count,
                "dagster/row_count": loaded_count,
                "seconds": round(result.seconds, 3),
                "rejection_reasons": dg.MetadataValue.md(reasons),
            }
        )
        yield dg.AssetCheckResult(
            check_name="rows_in_equal_loaded_plus_rejected",
            passed=rows_in == loaded_count + rejected_count,
            metadata={
                "rows_in": rows_in,
                "rows_loaded": loaded_count,
                "rows_rejected": rejected_count,
            },
        )

    return _ingest


ingest_assets = [extract_manifest, *(build_ingest_asset(ent) for ent in ENTITIES)]

__all__ = [
    "ACCEPT_SHRINK_TAG", "AS_OF_TAG", "EXTRACTS_TAG", "FORMAT_TAG", "ingest_assets", "defs",
]  # fmt: skip

defs = dg.Definitions(assets=ingest_assets)
