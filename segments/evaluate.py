"""The one evaluation function: assets, preview, CLI, tests and the benchmark all call it.

`WarehouseFrames` loads the marts from the DuckDB warehouse into memory once (only the
columns the definitions read) and keeps them for the process, so that previews and the
evaluation of a whole library do not go back to the file for every segment.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from core.warehouse import Warehouse, WrongDay, built_for, require_built_for
from segments.compiler import Compiled, EventCount, columns_read, compile_steps, event_filter
from segments.field_catalogue import ENTITY_KEYS, ENTITY_TABLES, EVENT_SOURCES, Catalogue
from segments.model import SegmentDefinition


class WarehouseError(RuntimeError):
    """The warehouse lacks a mart a segment needs; the message says what to build."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class WarehouseFrames:
    """The marts as polars frames, loaded on first use and kept for the process."""

    def __init__(
        self, warehouse: Warehouse | str | Path | None = None, once: bool = False
    ) -> None:
        self.warehouse = Warehouse.at(warehouse) if warehouse else None
        # `once`: the frames serve one evaluation (a preview in its own process), so what
        # pays off only over many is skipped: text read at once is kept as text (a mart
        # read in batches is still made compact, for memory), and event rows are probed
        # rather than grouped into runs (see `rows_of`).
        self.once = once
        self.duckdb_path = self.warehouse.path if self.warehouse else None
        # The as-of day the loaded marts were built for (None: frames given in memory, or
        # a warehouse without dbt's marts.warehouse_as_of).
        self.built_for: date | None = None
        self.built_timezone: str | None = None
        self._frames: dict[str, pl.DataFrame] = {}
        # Event table → each key's run of rows in it (see `rows_of`), built on first use.
        self._runs: dict[str, pl.DataFrame] = {}
        # The web app evaluates from several threads at once: loading (and replacing the
        # frames when another day is built) happens under this lock; a frame handed out
        # is never changed, so evaluation itself needs no lock.
        self._lock = threading.RLock()
        # Keys whose hashes collided on load: those are joined on the text ids instead.
        self._collisions: set[str] = set()

    @classmethod
    def from_frames(cls, frames: dict[str, pl.DataFrame]) -> WarehouseFrames:
        """Frames already in memory (e.g. a benchmark that loaded them itself)."""
        wf = cls(None)
        for table, df in frames.items():
            wf._frames[table] = _with_hashed_keys(df)
            wf._check_hash_collisions(table, wf._frames[table])
        return wf

    def join_key(self, key: str) -> str:
        """The column to join entities and events on: the hashed id unless it collides."""
        return key if key in self._collisions else HASHED[key]

    def _check_hash_collisions(self, table: str, df: pl.DataFrame) -> None:
        key = "case_id" if table == ENTITY_TABLES["case"] else "patient_id"
        if table in ENTITY_TABLES.values() and key in df.columns:
            ids, hashes = df.select(pl.col(key).n_unique(), pl.col(HASHED[key]).n_unique()).row(0)
            if ids != hashes:
                self._collisions.add(key)

    def prepare(
        self, definitions: Iterable[SegmentDefinition], also: dict[str, set[str]] | None = None
    ) -> None:
        """Load, in one pass per table, every column the definitions will read (and the
        columns of `also`, table → columns, e.g. those a preview shows)."""
        wanted: dict[str, set[str]] = {t: set(c) for t, c in (also or {}).items()}
        for d in definitions:
            for table, cols in columns_read(d).items():
                wanted.setdefault(table, set()).update(cols)
        with self._lock:
            self._load(wanted)

    def require_day(
        self, as_of: date, what: str = "a segment", timezone: str | None = None
    ) -> None:
        """Refuse to evaluate for `as_of` on marts built for another day or time zone."""
        try:
            require_built_for(self.built_for, as_of, what, timezone, self.built_timezone)
        except WrongDay as err:
            raise WarehouseError(str(err)) from None

    def frame(self, table: str, columns: Iterable[str]) -> pl.DataFrame:
        with self._lock:
            self._load({table: set(columns)})
            return self._frames[table]

    def rows_of(
        self, table: str, columns: Iterable[str], key: str, wanted: pl.Series,
        gather: list[str] | None = None,
    ) -> pl.DataFrame | None:
        """The rows of event `table` whose `key` is one of `wanted`, found through each
        key's run of rows in the table (only the `gather` columns, default all); None when
        the table is not held grouped by that key (or the frames serve one evaluation:
        the caller then probes every row, one pass, cheaper than grouping them once)."""
        if self.once or key != GROUPED_KEY or table not in _EVENT_TABLES:
            return None
        with self._lock:  # the frame and its runs as one pair (a reload replaces both)
            df = self.frame(table, columns)
            if key not in df.columns:
                return None
            runs = self._runs.get(table)
            if runs is None:
                # Grouped on the first use of its runs, not on load.
                df = self._frames[table] = _held(table, df)
                # Each key's run of rows (the frame holds each key's rows together): where
                # it starts and how long it is.
                raw = df[key].rle().struct.unnest()
                runs = self._runs[table] = raw.select(
                    pl.col("value").alias(key),
                    (pl.col("len").cum_sum() - pl.col("len")).cast(pl.UInt32).alias("start"),
                    pl.col("len").cast(pl.UInt32),
                )
        found = wanted.drop_nulls().unique().to_frame(key).join(runs, on=key)
        rows = found.select(pl.int_ranges("start", pl.col("start") + pl.col("len"),
                                          dtype=pl.UInt32).explode()).to_series()  # fmt: skip
        return (df.select(gather) if gather else df)[rows.drop_nulls()]

    def _held_columns(self, table: str) -> set[str]:
        """The columns a loaded frame answers for: its own, and the text id of an event
        table held by its hash alone (see `_read`)."""
        have = set(self._frames[table].columns)
        return have | {c for c, h in HASHED.items() if h in have and c not in self._collisions}

    def _load(self, wanted: dict[str, set[str]]) -> None:
        missing = {
            t: cols
            for t, cols in wanted.items()
            if t not in self._frames or not cols <= self._held_columns(t)
        }
        if not missing:
            return
        if self.warehouse is None:
            raise WarehouseError(f"frames for {sorted(missing)} were not given")
        if not self.warehouse.exists():
            raise WarehouseError(
                f"warehouse {self.duckdb_path} does not exist; run the pipeline (or dbt build) "
                "first, or set DUCKDB_PATH"
            )
        with self.warehouse.connect(read_only=True) as con:
            day, zone = built_for(con)
            if self._frames and (day, zone) != (self.built_for, self.built_timezone):
                # The marts were rebuilt for another day since the first frames were read.
                self._frames.clear()
                self._collisions.clear()
                self._runs.clear()
                missing = wanted
            self.built_for, self.built_timezone = day, zone
            # Entity tables first: whether their ids' hashes collide decides whether the
            # event tables need their text ids.
            for table in sorted(missing, key=lambda t: t in _EVENT_TABLES):
                cols = missing[table]
                if table in self._frames:
                    derived = set(HASHED.values())
                    cols = cols | (self._held_columns(table) - derived)
                collided = set(self._collisions)
                self._frames[table] = self._read(con, table, cols)
                self._runs.pop(table, None)
                self._check_hash_collisions(table, self._frames[table])
                for key in self._collisions - collided:
                    # Event frames read before held this key by its hash alone: read again.
                    for event_table in [t for t in self._frames if t in _EVENT_TABLES]:
                        if HASHED[key] in self._frames[event_table].columns:
                            self._frames[event_table] = self._read(
                                con, event_table, self._held_columns(event_table)
                                - set(HASHED.values()) | {key},
                            )
                            self._runs.pop(event_table, None)

    def _read(self, con: duckdb.DuckDBPyConnection, table: str, cols: set[str]) -> pl.DataFrame:
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
        # Ids are hashed as they are read (see HASHED). An event table holds millions of
        # rows of ids that are only ever joined and counted on: there the text id is left
        # in the warehouse, unless two ids of the entity share a hash.
        keys = [c for c in HASHED if c in cols]
        text = sorted(
            c for c in cols
            if not (table in _EVENT_TABLES and c in HASHED and c not in self._collisions)
        )
        hashed = [f"case when {_quote(c)} is not null then hash({_quote(c)}) end as "
                  f"{_quote(HASHED[c])}" for c in keys]  # fmt: skip
        select = ", ".join([*(_quote(c) for c in text), *hashed])
        batched = table in _EVENT_TABLES and _more_rows_than(con, table, BATCHED_FROM)
        rel = con.sql(f"select {select} from marts.{_quote(table)}")
        if batched:
            return _in_batches(rel)
        # Straight from DuckDB's Arrow stream: polars needs no pyarrow for it (a tenth of
        # a cold preview is importing pyarrow).
        frame = _as_held_types(pl.DataFrame(rel))
        return frame if self.once else _categorise(frame)


# An event table of more than BATCHED_FROM rows is read BATCH_ROWS at a time (see
# `_in_batches`); a smaller one at once, which spares a cold preview the import of
# pyarrow that reading in batches needs.
BATCH_ROWS = 1_000_000
BATCHED_FROM = 4_000_000


def _more_rows_than(con: duckdb.DuckDBPyConnection, table: str, rows: int) -> bool:
    """Whether marts.`table` holds more than `rows` rows (counted no further than that)."""
    query = f"select count(*) from (select 1 from marts.{_quote(table)} limit {rows + 1})"
    return con.execute(query).fetchall()[0][0] > rows


def _in_batches(rel: duckdb.DuckDBPyRelation) -> pl.DataFrame:
    """The rows of `rel`, read a batch at a time and each batch made compact at once (the
    text columns the first batch finds few values in held as Categorical, as
    `_categorise` decides), so that neither DuckDB's whole result nor the whole frame
    in text is ever in memory beside the frame: at 1M patients (19.7M appointments) this
    halves the memory a read of the appointments needs, and is faster."""
    parts: list[pl.DataFrame] = []
    for batch in rel.to_arrow_reader(BATCH_ROWS):
        part = _as_held_types(pl.from_arrow(batch))
        part = _categorise(part) if not parts else part.cast(parts[0].schema)
        parts.append(_owning(part))
    if not parts:
        return _categorise(_as_held_types(pl.DataFrame(rel.limit(0))))
    return pl.concat(parts, rechunk=False)


def _owning(df: pl.DataFrame) -> pl.DataFrame:
    """`df` in memory of its own. polars keeps the Arrow columns it is given as they are,
    and DuckDB frees the memory of a batch only when every column of it is gone: a date
    column kept from a batch would keep the whole batch alive, its text included (at 1M
    patients, 0.5 GiB more for the appointments). Joining two slices is a copy."""
    if df.height < 2:
        return df
    return pl.concat([df.slice(0, 1), df.slice(1)], rechunk=True)


def _as_held_types(df: pl.DataFrame) -> pl.DataFrame:
    """Money arrives as DECIMAL: compared as float, like every other number."""
    return df.with_columns(pl.col(pl.Decimal).cast(pl.Float64))


# Text columns with at most this many distinct values are held as Categorical: filters on
# category / status / practitioner over millions of event rows then compare small integer
# codes instead of strings. Keys stay text, since they are joined on.
CATEGORICAL_MAX_DISTINCT = 10_000
_KEY_COLUMNS = {"patient_id", "case_id"}


def _categorise(df: pl.DataFrame) -> pl.DataFrame:
    text = [c for c, t in df.schema.items() if t == pl.String and c not in _KEY_COLUMNS]
    if not text or df.is_empty():
        return df
    distinct = df.select(pl.col(text).approx_n_unique()).row(0)
    low = [c for c, n in zip(text, distinct, strict=True) if n <= CATEGORICAL_MAX_DISTINCT]
    return df.with_columns(pl.col(low).cast(pl.Categorical)) if low else df


# Events are counted and joined on a 64-bit hash of the id: grouping and joining millions
# of rows on integers is several times faster than on text. Loading checks that no two
# distinct ids of an entity share a hash; if they ever did, the text ids are used.
HASHED = {"patient_id": "__patient_key", "case_id": "__case_key"}


def _with_hashed_keys(df: pl.DataFrame) -> pl.DataFrame:
    """Frames given in memory hash their ids in polars (frames read from the warehouse
    are hashed by DuckDB as they are read; the two are never mixed in one set of frames).
    polars hashes null to a value; a missing id must stay missing so it matches nothing."""
    return df.with_columns(
        pl.when(pl.col(c).is_not_null()).then(pl.col(c).hash(seed=0)).alias(h)
        for c, h in HASHED.items()
        if c in df.columns
    )


# Event marts are held grouped by the patient key (see `WarehouseFrames.rows_of`).
GROUPED_KEY = HASHED["patient_id"]
_EVENT_TABLES = {source.table for source in EVENT_SOURCES.values()}


def _held(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """A frame as it is kept: each patient's event rows together (one run of rows per
    key), so that a few candidates' rows are found through their runs (`rows_of`) instead
    of by probing every row. Entity frames keep their order, which members' row numbers
    refer to."""
    if table in _EVENT_TABLES and GROUPED_KEY in df.columns:
        return _grouped(df, GROUPED_KEY)
    return df


def _grouped(df: pl.DataFrame, key: str) -> pl.DataFrame:
    """`df` with each non-null key's rows in one run, each key's rows in their order.

    A mart is mostly grouped already (an extract in patient order keeps that order through
    ingest and dbt, but for the keys split where parallel threads met): only the rows of
    keys found in more than one run move, to the end, grouped. Rows with a null key stay.
    """
    values = df[key].rle().struct.field("value").drop_nulls()
    split = values.filter(values.is_duplicated()).unique()
    if split.is_empty():
        return df
    moved = df[key].is_in(split.implode()).fill_null(False)
    return pl.concat([df.filter(~moved), df.filter(moved).sort(key, maintain_order=True)])


# "Few candidates left": at most 1 in NARROW_SHARE of the entities.
NARROW_SHARE = 10
# Row number of a member in the loaded entity frame (see `evaluate(with_rows=True)`).
ROW = "__row"


def member_frame(
    definition: SegmentDefinition,
    frames: WarehouseFrames,
    catalogue: Catalogue,
    as_of: date,
    timezone: str,
) -> pl.LazyFrame:
    """The members as a lazy frame of the entity's keys (and their row numbers).

    The steps of the definition (see `compile_steps`) narrow the candidates in order of
    cost: conditions without events first, then events conditions over the smallest event
    marts; once few candidates are left, event rows are only looked at for them.
    """
    read = columns_read(definition)
    table = ENTITY_TABLES[definition.entity]
    keys = list(ENTITY_KEYS[definition.entity])
    everyone = frames.frame(table, read[table]).with_row_index(ROW)

    def cost(step: Compiled) -> int:
        tables = {EVENT_SOURCES[c.condition.events].table for c in step.event_counts}
        return sum(frames.frame(t, read[t]).height for t in tables)

    steps = sorted(compile_steps(definition, catalogue, as_of, timezone), key=cost)
    candidates = everyone
    for i, step in enumerate(steps):
        lf = candidates.lazy()
        # Probing every event row against the candidates pays off only once few are left.
        narrowed = candidates.height * NARROW_SHARE <= everyone.height
        for count in step.event_counts:
            lf = _join_event_count(lf, candidates, count, definition, frames, catalogue,
                                   read, narrowed, as_of, timezone)  # fmt: skip
        # Later steps need the entity's columns; after the last one only the keys remain.
        last = i == len(steps) - 1
        out = [*keys, ROW] if last else everyone.columns
        candidates = lf.filter(step.predicate.fill_null(False)).select(out).collect()
        if candidates.is_empty():
            break
    return candidates.lazy().select(*keys, ROW)


def _join_event_count(
    lf: pl.LazyFrame,
    candidates: pl.DataFrame,
    count: EventCount,
    definition: SegmentDefinition,
    frames: WarehouseFrames,
    catalogue: Catalogue,
    read: dict[str, set[str]],
    narrowed: bool,
    as_of: date,
    timezone: str,
) -> pl.LazyFrame:
    """`lf` with the events condition's column: has-any (bool) or the count of events."""
    source = EVENT_SOURCES[count.condition.events]
    key = frames.join_key(count.join_key)
    keep = event_filter(count.condition, catalogue, as_of, timezone)
    events = None
    if narrowed:
        # Few candidates left: only their event rows are looked at, found through their
        # runs in the key order the events are held in (or else by probing every row), and
        # only the columns the condition reads are gathered.
        needed = [key, *(keep.meta.root_names() if keep is not None else [])]
        theirs = frames.rows_of(source.table, read[source.table], key, candidates[key],
                                list(dict.fromkeys(needed)))  # fmt: skip
        if theirs is not None:
            events = theirs.lazy()
        else:
            mine = pl.col(key).is_in(candidates[key].implode())
            keep = mine if keep is None else mine & keep
    if events is None:
        events = frames.frame(source.table, read[source.table]).lazy()
    # Only the key of the matching events is needed: gather that one column.
    events = events.select(pl.col(key) if keep is None else pl.col(key).filter(keep))
    if count.exists:
        # Has at least one matching event: membership in the (usually small) set of keys
        # that have one, tested once per candidate.
        keys = events.unique().collect()[key]
        has = pl.col(key).is_in(keys.implode()).fill_null(False)
        return lf.with_columns(has.alias(count.alias))
    counts = events.group_by(key).agg(pl.len().cast(pl.Int64).alias(count.alias))
    return lf.join(counts, on=key, how="left").with_columns(pl.col(count.alias).fill_null(0))


def evaluate(
    definition: SegmentDefinition,
    frames: WarehouseFrames,
    catalogue: Catalogue,
    as_of: date,
    timezone: str,
    with_rows: bool = False,
) -> pl.DataFrame:
    """The members of a segment on as-of date `as_of`: patient_id and case_id.

    `case_id` is null for patient segments, so every segment has the same member shape.
    Members come in the entity mart's row order (stable for a given warehouse; cheaper
    than sorting ids). `with_rows` adds each member's row number in the loaded entity
    frame (column `ROW`), so a caller can fetch a few members' other columns directly.
    """
    lf = member_frame(definition, frames, catalogue, as_of, timezone)
    # The marts are loaded by now: their fields must be of the day the dates are taken at.
    frames.require_day(as_of, f"segment {definition.name!r}", timezone)
    if definition.entity == "patient":
        lf = lf.with_columns(pl.lit(None, dtype=pl.String).alias("case_id"))
    out = ["patient_id", "case_id", ROW] if with_rows else ["patient_id", "case_id"]
    return lf.sort(ROW).select(out).collect()
