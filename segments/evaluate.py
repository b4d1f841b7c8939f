"""The one evaluation function: assets, preview, CLI, tests and the benchmark all call it.

`WarehouseFrames` loads the marts from the DuckDB warehouse into memory once (only the
columns the definitions read) and keeps them for the process, so that previews and the
evaluation of a whole library do not go back to the file for every segment.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from segments.catalogue import ENTITY_KEYS, ENTITY_TABLES, EVENT_SOURCES, Catalogue
from segments.compiler import columns_read, compile_definition, event_filter
from segments.model import SegmentDefinition


class WarehouseError(RuntimeError):
    """The warehouse lacks a mart a segment needs; the message says what to build."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class WarehouseFrames:
    """The marts as polars frames, loaded on first use and kept for the process."""

    def __init__(self, duckdb_path: str | Path | None = None) -> None:
        self.duckdb_path = Path(duckdb_path) if duckdb_path else None
        self._frames: dict[str, pl.DataFrame] = {}

    @classmethod
    def from_frames(cls, frames: dict[str, pl.DataFrame]) -> WarehouseFrames:
        """Frames already in memory (e.g. a benchmark that loaded them itself)."""
        wf = cls(None)
        wf._frames = dict(frames)
        return wf

    def prepare(self, definitions: Iterable[SegmentDefinition]) -> None:
        """Load, in one pass per table, every column the definitions will read."""
        wanted: dict[str, set[str]] = {}
        for d in definitions:
            for table, cols in columns_read(d).items():
                wanted.setdefault(table, set()).update(cols)
        self._load(wanted)

    def frame(self, table: str, columns: Iterable[str]) -> pl.DataFrame:
        self._load({table: set(columns)})
        return self._frames[table]

    def _load(self, wanted: dict[str, set[str]]) -> None:
        missing = {
            t: cols
            for t, cols in wanted.items()
            if t not in self._frames or not cols <= set(self._frames[t].columns)
        }
        if not missing:
            return
        if self.duckdb_path is None:
            raise WarehouseError(f"frames for {sorted(missing)} were not given")
        if not self.duckdb_path.exists():
            raise WarehouseError(
                f"warehouse {self.duckdb_path} does not exist; run the pipeline (or dbt build) "
                "first, or set DUCKDB_PATH"
            )
        con = duckdb.connect(str(self.duckdb_path), read_only=True)
        try:
            con.execute("SET TimeZone = 'UTC'")
            for table, cols in missing.items():
                if table in self._frames:
                    cols = cols | set(self._frames[table].columns)
                self._frames[table] = self._read(con, table, cols)
        finally:
            con.close()

    @staticmethod
    def _read(con: duckdb.DuckDBPyConnection, table: str, cols: set[str]) -> pl.DataFrame:
        present = {
            r[0]
            for r in con.execute(
                "select column_name from information_schema.columns "
                "where table_schema = 'marts' and table_name = ?",
                [table],
            ).fetchall()
        }
        if not present:
            raise WarehouseError(
                f"the warehouse has no table marts.{table}; build the marts (dbt build) first"
            )
        absent = sorted(cols - present)
        if absent:
            raise WarehouseError(
                f"marts.{table} has no column(s) {', '.join(absent)}; rebuild the marts "
                "or fix the field catalogue"
            )
        # Identifiers come from the validated definition and the catalogue; quoted anyway.
        select = ", ".join(_quote(c) for c in sorted(cols))
        df = con.sql(f"select {select} from marts.{_quote(table)}").pl()
        # Money arrives as DECIMAL: compare it as float, like every other number.
        return df.with_columns(pl.col(pl.Decimal).cast(pl.Float64))


def member_frame(
    definition: SegmentDefinition,
    frames: WarehouseFrames,
    catalogue: Catalogue,
    as_of: date,
    timezone: str,
    columns: Iterable[str] = (),
) -> pl.LazyFrame:
    """The members as a lazy frame: the entity keys plus any extra `columns` asked for."""
    compiled = compile_definition(definition, catalogue, as_of, timezone)
    read = columns_read(definition)
    table = ENTITY_TABLES[definition.entity]
    keys = list(ENTITY_KEYS[definition.entity])
    extra = [c for c in columns if c not in keys]
    lf = frames.frame(table, read[table] | set(extra)).lazy()
    for count in compiled.event_counts:
        source = EVENT_SOURCES[count.condition.events]
        events = frames.frame(source.table, read[source.table]).lazy()
        row_filter = event_filter(count.condition, catalogue, as_of, timezone)
        if row_filter is not None:
            events = events.filter(row_filter)
        counts = events.group_by(count.join_key).agg(pl.len().cast(pl.Int64).alias(count.alias))
        lf = lf.join(counts, on=count.join_key, how="left").with_columns(
            pl.col(count.alias).fill_null(0)
        )
    return lf.filter(compiled.predicate.fill_null(False)).select([*keys, *extra])


def evaluate(
    definition: SegmentDefinition,
    frames: WarehouseFrames,
    catalogue: Catalogue,
    as_of: date,
    timezone: str,
    columns: Iterable[str] = (),
) -> pl.DataFrame:
    """The members of a segment on as-of date `as_of`, sorted by patient_id and case_id.

    The frame holds patient_id and case_id (null for patient segments, so every segment
    has the same member shape), then any extra entity `columns` asked for (a preview).
    """
    lf = member_frame(definition, frames, catalogue, as_of, timezone, columns)
    if definition.entity == "patient":
        lf = lf.with_columns(pl.lit(None, dtype=pl.String).alias("case_id"))
    extra = [c for c in columns if c not in ("patient_id", "case_id")]
    return lf.select("patient_id", "case_id", *extra).sort("patient_id", "case_id").collect()
