"""Ingest: one step that loads the whole extract, an asset per raw entity.

The extract is one day's data, so it is loaded as one: every entity is read into tables
beside the live ones, then all are checked (each file counted again independently, no
entity shrunk past the limit) and swapped in together. A file-level problem or a refusal
anywhere replaces nothing. Each entity's asset carries its counts and its
rows-in = loaded + rejected check.

Thin wrappers around `ingest.load` and `ingest.guard`; the logic lives there.
"""

import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from core.warehouse import scalar
from ingest.csv_reader import ExtractFileError
from ingest.entities import ENTITIES, Entity
from ingest.guard import ShrinkRule, check_extract, guarded_swap
from ingest.inputs import CountsAside, count_input_rows
from ingest.load import INGEST_MEMORY_LIMIT, LoadResult, load_all
from orchestration.resources import (
    PROGRESS,
    ClinicSettingsResource,
    WarehouseResource,
    as_of_day,
    daily_partitions,
)

# Run tags that carry what the sensor or CLI chose for this run (the day is its partition).
EXTRACTS_TAG = "clinic-audiences/extracts_dir"
FORMAT_TAG = "clinic-audiences/format"
# Entities (comma-separated, or 'all') whose drop against the last accepted load this run
# accepts on purpose (`audiences run --accept-shrink`).
ACCEPT_SHRINK_TAG = "clinic-audiences/accept_shrink"
# "true": load a Cliniko pull whose pages do not add up, on purpose
# (`audiences run --accept-incomplete`).
ACCEPT_INCOMPLETE_TAG = "clinic-audiences/accept_incomplete"

DATED_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def latest_dated_folder(root: Path, on_or_before: date | None = None) -> Path | None:
    """The newest `YYYY-MM-DD` folder under the extracts root (dated on or before
    `on_or_before` when given), if any."""
    if not root.is_dir():
        return None
    dated = sorted(p for p in root.iterdir() if p.is_dir() and _day_of(p.name) is not None)
    if on_or_before is not None:
        dated = [p for p in dated if p.name <= on_or_before.isoformat()]
    return dated[-1] if dated else None


def _day_of(name: str) -> date | None:
    """The day a folder is named for (`YYYY-MM-DD`, a real date), or None."""
    if not DATED_FOLDER.match(name):
        return None
    try:
        return date.fromisoformat(name)
    except ValueError:
        return None


def resolve_extract(
    tags: dict[str, str], settings: ClinicSettingsResource, as_of: date | None = None
) -> tuple[Path, str]:
    """Which extract folder and format this run reads: run tags, then settings, then the
    dated folder under the extracts root for the run's day: the one named for it, else
    the newest before it (a backfill from the Dagster UI loads each day's own extract,
    never a later day's)."""
    fmt = tags.get(FORMAT_TAG) or settings.extract_format
    chosen = tags.get(EXTRACTS_TAG) or settings.extracts_dir
    if chosen:
        return Path(chosen), fmt
    latest = latest_dated_folder(Path(settings.extracts_root), as_of)
    if latest is None:
        by = f" dated {as_of} or earlier" if as_of else ""
        raise dg.Failure(
            description=(
                f"No extract to ingest: no folder given and no YYYY-MM-DD folder{by} under "
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


def shrink_rule(tags: dict[str, str], max_drop: float) -> ShrinkRule:
    """What this run accepts: the run's accept-shrink tag, and the allowed drop
    (INGEST_MAX_DROP, a fraction, default 0.5)."""
    try:
        return ShrinkRule.parse(tags.get(ACCEPT_SHRINK_TAG), max_drop)
    except ValueError as err:
        raise dg.Failure(description=f"INGEST_MAX_DROP / accept-shrink: {err}") from None


def other_time_zones(con, clinic_timezone: str) -> list[str]:
    """The locations' time zones that are not the clinic's (dates are taken in the clinic's)."""
    rows = con.execute(
        "select distinct time_zone from raw.locations where time_zone is not null "
        "and time_zone <> ? order by 1",
        [clinic_timezone],
    ).fetchall()
    return [zone for (zone,) in rows]


class Progress:
    """One line per entity as the extract loads: its rows, the rate so far, and about how
    long the entities left will take at that rate (from the rows estimated up front)."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.expected: dict[str, int] = {}
        self.rows = 0
        self.seconds = 0.0

    def expect(self, rows: dict[str, int]) -> None:
        self.expected = dict(rows)

    def done(self, result: LoadResult) -> None:
        self.expected.pop(result.entity, None)
        if result.unchanged:
            self.say(f"{result.entity}: unchanged since its last load, not read again")
            return
        self.rows += result.rows_in
        self.seconds += result.seconds
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        left = sum(self.expected.values())
        line = (f"{result.entity}: {result.rows_in:,} rows in {result.seconds:.1f}s "
                f"({result.rows_in / max(result.seconds, 1e-9):,.0f} rows/s)")  # fmt: skip
        if left and rate:
            line += f"; {left:,} rows left, about {left / rate:.0f}s at {rate:,.0f} rows/s"
        self.say(line)


ROW_CHECK = "rows_in_equal_loaded_plus_rejected"


def raw_key(ent: Entity) -> dg.AssetKey:
    return dg.AssetKey(["raw", ent.name])


def build_ingest_assets(
    partitions: dg.PartitionsDefinition | None = None,
) -> list[dg.AssetsDefinition]:
    """The ingest step, partitioned by as-of day (default: daily partitions in UTC)."""
    partitions = partitions or daily_partitions()

    @dg.multi_asset(
        name="ingest_extract",
        partitions_def=partitions,
        specs=[
            dg.AssetSpec(
                raw_key(ent),
                group_name="ingest",
                kinds={"duckdb", "polars"},
                description=f"{ent.description} Loaded from the extract into raw.{ent.name}; bad "
                f"rows go to raw.{ent.name}__rejected with a reason.",
            )
            for ent in ENTITIES
        ],
        check_specs=[
            dg.AssetCheckSpec(
                ROW_CHECK,
                asset=raw_key(ent),
                blocking=True,
                description="Every input row is loaded or rejected with a reason (counted again "
                "from the file, independently of the loader).",
            )
            for ent in ENTITIES
        ],
        pool="warehouse",
    )
    def ingest_extract(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        settings: ClinicSettingsResource,
    ):
        """Refuse an extract without a required entity up front; read every entity beside
        the live tables; swap the whole extract in only if every count agrees and nothing
        shrank past the limit."""
        tags = dict(context.run.tags)
        as_of = as_of_day(context)
        extract_dir, fmt = resolve_extract(tags, settings, as_of)
        rule = shrink_rule(tags, settings.ingest_max_drop)
        rows_in: dict[str, int] = {}
        guarded = guarded_swap(rows_in, rule, as_of)

        def counted_swap(con: duckdb.DuckDBPyConnection, staged: list) -> None:
            rows_in.update(counts.results())  # every file counted, as the loader read it
            guarded(con, staged)

        progress = Progress(lambda line: context.log.info(PROGRESS + line))

        try:
            # Each file is counted from the file, independently of the loader, beside it.
            with (
                warehouse.connect(default_memory=INGEST_MEMORY_LIMIT) as con,
                CountsAside(extract_dir, fmt, count_input_rows) as counts,
            ):
                accept_incomplete = tags.get(ACCEPT_INCOMPLETE_TAG, "").lower() == "true"
                expected = check_extract(con, extract_dir, fmt, rule, as_of, accept_incomplete)
                context.log.info(
                    "extract, about: "
                    + ", ".join(f"{e} {n:,}" for e, n in expected.items() if n)
                )
                progress.expect(expected)
                results = load_all(
                    con, extract_dir, fmt, as_of=as_of,
                    before_swap=counted_swap, before_stage=counts.start,
                    accept_incomplete=accept_incomplete, after_stage=progress.done,
                )  # fmt: skip
                kept = [name for name, result in results.items() if result.unchanged]
                for name in kept:
                    rows_in[name] = results[name].rows_in  # counted when it was loaded
                if kept:
                    context.log.info(
                        "unchanged since their last load, not read again: " + ", ".join(kept)
                    )
                zones = other_time_zones(con, settings.clinic_timezone)
                tables = {
                    ent.name: (
                        scalar(con, f"select count(*) from raw.{ent.name}"),
                        scalar(con, f"select count(*) from raw.{ent.name}__rejected"),
                        top_reasons_markdown(con, ent),
                    )
                    for ent in ENTITIES
                }
        except ExtractFileError as err:
            raise dg.Failure(description=str(err)) from None
        except (duckdb.IOException, duckdb.OutOfMemoryException, OSError) as err:
            # A full disk or a file that cannot be written: the extract is swapped in as one
            # transaction, so the live tables are as they were.
            raise dg.Failure(
                description=f"ingest could not write the warehouse ({str(err).splitlines()[0]}); "
                f"nothing was replaced. Free disk space where {warehouse.duckdb_path} lives (the "
                "load needs room for the whole extract beside the live tables) and run again."
            ) from None
        if zones:
            context.log.warning(
                f"the extract's locations are in {', '.join(zones)}, but dates are taken in "
                f"CLINIC_TIMEZONE={settings.clinic_timezone}: a visit late in the evening or "
                "early in the morning lands on another day. "
                + (f"Set CLINIC_TIMEZONE={zones[0]} if that is the clinic's time zone."
                   if len(zones) == 1 else "Set CLINIC_TIMEZONE to the clinic's own time zone.")
            )
        for ent in ENTITIES:
            result = results[ent.name]
            loaded, rejected, reasons = tables[ent.name]
            yield dg.MaterializeResult(
                asset_key=raw_key(ent),
                metadata={
                    "source": result.source or "(absent: empty entity)",
                    "rows_in": rows_in[ent.name],
                    "rows_loaded": loaded,
                    "rows_rejected": rejected,
                    "dagster/row_count": loaded,
                    "seconds": round(result.seconds, 3),
                    "unchanged_since_last_load": result.unchanged,
                    "accepted_shrink": rule.accepts(ent.name),
                    "rejection_reasons": dg.MetadataValue.md(reasons),
                    **({"time_zones_not_clinic_time_zone": ", ".join(zones)}
                       if ent.name == "locations" and zones else {}),
                },
            )  # fmt: skip
            yield dg.AssetCheckResult(
                asset_key=raw_key(ent),
                check_name=ROW_CHECK,
                passed=rows_in[ent.name] == loaded + rejected,
                metadata={"rows_in": rows_in[ent.name], "rows_loaded": loaded,
                          "rows_rejected": rejected},
            )  # fmt: skip

    return [ingest_extract]



__all__ = [
    "ACCEPT_INCOMPLETE_TAG", "ACCEPT_SHRINK_TAG", "EXTRACTS_TAG", "FORMAT_TAG",
    "build_ingest_assets",
]  # fmt: skip
