"""Load one extract folder into the warehouse's `raw` schema.

For each entity: read text (CSV or Cliniko pages) → keep the last row of each duplicate
id → type → validate with pandera → write the new `raw.<entity>` and
`raw.<entity>__rejected` beside the live tables (staging). Then every staged entity is
swapped in together, in one transaction (publishing): readers see the whole previous
extract or the whole new one, never a mix, and a refusal of any entity keeps them all.
Every input row ends in one of the two tables: rows in = rows loaded + rows rejected. A
CSV file is staged in the warehouse and processed in batches, so memory stays flat however
large the extract is.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from ingest import cliniko, unchanged
from ingest.csv_reader import (
    ExtractFileError,
    StagedCsv,
    TextSource,
    column_names,
    stage_csv,
    text_column,
)
from ingest.entities import (
    DELETED_AT,
    ENTITIES,
    ROW_NUMBER,
    SOURCE_FILE,
    SOURCE_ROW,
    Entity,
    entity,
)
from ingest.parse import REJECTED_SCHEMA, clean_frame, parse_entity, typed_schema
from ingest.raw_tables import raw_columns_ddl, rejected_columns_ddl
from ingest.schemas import validate
from ingest.sources import check_file_names, check_format, entity_source
from ingest.sql_typing import cleaned, quoted_name, sql_text, typed_from_raw, typed_select

BATCH_ROWS = 1_000_000
# DuckDB's memory while an extract loads, unless DUCKDB_MEMORY_LIMIT says otherwise. Its
# statements stream (a file in, a table out): more memory only caches what was written,
# and at 1M patients a load at 1GB takes 74 s and peaks at 2.6 GiB, against 80 s and
# 3.3 GiB at DuckDB's default of 80% of RAM.
INGEST_MEMORY_LIMIT = "1GB"
DUPLICATES_SCHEMA = {ROW_NUMBER: pl.Int64, "winner_file": pl.String, "winner_row": pl.Int64}
LINEAGE = (SOURCE_FILE, SOURCE_ROW, ROW_NUMBER, DELETED_AT)


@dataclass(frozen=True)
class LoadCounts:
    """What a load is about to put in place, shown to the checks that may still refuse it."""

    entity: str
    rows_in: int
    loaded: int
    rejected: int
    source: str


# Runs inside the transaction that swaps the new tables in: raising keeps the old ones.
BeforeSwap = Callable[[duckdb.DuckDBPyConnection, list[LoadCounts]], None]


@dataclass(frozen=True)
class LoadResult:
    entity: str
    rows_in: int
    loaded: int
    rejected: int
    source: str  # the file or folder read, or '' when the entity is absent
    seconds: float
    # The source was the one already loaded (`ingest.unchanged`): its tables were kept.
    unchanged: bool = False


def empty_rejected() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTED_SCHEMA)


def empty_text(ent: Entity) -> pl.DataFrame:
    columns = {c: pl.String for c in ent.column_names}
    return pl.DataFrame(schema={**columns, SOURCE_FILE: pl.String, SOURCE_ROW: pl.Int64})


def last_occurrences(text: pl.DataFrame, key: str) -> pl.DataFrame:
    """Earlier occurrences of a repeated id in an in-memory frame, with where the last one
    is (the same answer `CsvRows.earlier_copies` gives in SQL for a CSV file)."""
    cleaned = text.select(ROW_NUMBER, SOURCE_FILE, SOURCE_ROW, pl.col(key).str.strip_chars())
    cleaned = cleaned.filter(pl.col(key).is_not_null() & (pl.col(key) != ""))
    winners = cleaned.filter(pl.col(key).is_last_distinct()).select(
        key, pl.col(SOURCE_FILE).alias("winner_file"), pl.col(SOURCE_ROW).alias("winner_row")
    )
    earlier = cleaned.filter(~pl.col(key).is_last_distinct())
    return earlier.join(winners, on=key, how="left").select(DUPLICATES_SCHEMA.keys())


def as_rejected(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows + a reason column → the rejected-table shape (the row as JSON text)."""
    data = [c for c in frame.columns if c not in (*LINEAGE, "reason", "_index")]
    return frame.select(
        pl.col(SOURCE_FILE).alias("source_file"),
        pl.col(SOURCE_ROW).alias("source_row"),
        pl.col("reason"),
        pl.struct([pl.col(c).cast(pl.String) for c in data]).struct.json_encode().alias("record"),
    ).cast(REJECTED_SCHEMA)


def process_batch(
    text: pl.DataFrame, ent: Entity, duplicates: pl.DataFrame, as_of: date | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One batch of text rows → (typed rows to load, rejected rows).

    Duplicates are dropped before typing, so the last occurrence of an id wins even when
    it turns out to be invalid (it is then rejected for its own reason): an older version
    of a record never silently replaces a newer one.
    """
    cleaned = clean_frame(text)
    marked = cleaned.join(duplicates, on=ROW_NUMBER, how="left", maintain_order="left")
    is_duplicate = pl.col("winner_row").is_not_null()
    earlier = marked.filter(is_duplicate).with_columns(
        (
            pl.lit(f"duplicate {ent.key} '")
            + pl.col(ent.key or ROW_NUMBER).cast(pl.String)
            + pl.lit("': replaced by the later row at ")
            + pl.col("winner_file")
            + pl.lit(":")
            + pl.col("winner_row").cast(pl.String)
        ).alias("reason")
    )
    kept = marked.filter(~is_duplicate).drop("winner_file", "winner_row")
    deleted = kept.head(0).with_columns(pl.lit(None, dtype=pl.String).alias("reason"))
    if DELETED_AT in kept.columns:
        # The source says the (latest copy of the) record is deleted: not the clinic's.
        is_deleted = pl.col(DELETED_AT).is_not_null()
        deleted = kept.filter(is_deleted).with_columns(
            (pl.lit("deleted in the practice-management system at ") + pl.col(DELETED_AT)
             + pl.lit(": not part of the clinic")).alias("reason")
        )  # fmt: skip
        kept = kept.filter(~is_deleted).drop(DELETED_AT)
    parsed, parse_rejects = parse_entity(kept, ent, as_of)
    valid, failed = validate(parsed.drop(ROW_NUMBER), ent)
    rejected = pl.concat(
        [
            as_rejected(earlier.drop("winner_file", "winner_row")),
            as_rejected(deleted),
            parse_rejects.cast(REJECTED_SCHEMA),
            as_rejected(failed),
        ]
    )
    return valid.cast(typed_schema(ent)), rejected  # type: ignore[arg-type]


def side_table(name: str) -> str:
    return f"raw.__loading_{name}"


class RawWriter:
    """Builds `raw.<entity>` and its rejected table beside the live ones (`publish` swaps
    them in).

    Batches are inserted into the side table as they come (one big transaction would
    hold every uncommitted row in memory).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, ent: Entity, extras: list[str]) -> None:
        self.con, self.ent = con, ent
        self.loaded = 0
        self.rejected: list[pl.DataFrame] = []
        self.building = side_table(ent.name)
        self.columns_ddl = raw_columns_ddl(ent) + "".join(f', "{c}" VARCHAR' for c in extras)
        con.execute("CREATE SCHEMA IF NOT EXISTS raw")
        self.create()

    def create(self, bookkeeping: str = "") -> None:
        """(Re)create the empty side table, with `bookkeeping` columns for while it fills."""
        self.con.execute(
            f"CREATE OR REPLACE TABLE {self.building} ({self.columns_ddl}{bookkeeping})"
        )

    def add(self, valid: pl.DataFrame, rejected: pl.DataFrame) -> None:
        if valid.height:
            self.con.register("_loaded", valid.to_arrow())
            self.con.execute(f"INSERT INTO {self.building} BY NAME SELECT * FROM _loaded")
            self.con.unregister("_loaded")
        self.loaded += valid.height
        self.rejected.append(rejected)

    def finish(self, reader_rejects: pl.DataFrame, rows_in: int, source: str) -> LoadCounts:
        """Write the rejected side table; the entity is staged, ready to publish."""
        rejected = pl.concat([reader_rejects.cast(REJECTED_SCHEMA), *self.rejected]).sort(
            "source_file", "source_row"
        )
        table = f"{self.building}__rejected"
        self.con.execute(f"CREATE OR REPLACE TABLE {table} ({rejected_columns_ddl()})")
        self.con.register("_rejected", rejected.to_arrow())
        try:
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rejected")
        finally:
            self.con.unregister("_rejected")
        return LoadCounts(self.ent.name, rows_in, self.loaded, rejected.height, source)


class CsvRows:
    """Puts the good records of a CSV file in the entity's side table, in one pass of
    DuckDB's reader: every value of plain text typed in SQL (`ingest.sql_typing`), and
    every row that SQL does not decide marked, for polars.

    Polars decides a row whose text has another shape or fails a check, and every earlier
    copy of a repeated id (rejected as replaced; the ids that repeat are found in the side
    table once it is full). Their text is read again from their own bytes in the file
    (`StagedCsv.text_of`, by the parser that read them first); those rows then leave the
    side table and come back as polars loads or rejects them, so which rows are loaded,
    which are rejected and why is exactly what polars alone would say.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, writer: RawWriter, names: list[str],
        path: Path, as_of: date | None, sql_typing: bool,
    ) -> None:  # fmt: skip
        self.con, self.writer, self.names, self.path = con, writer, names, path
        ent = writer.ent
        present = set(names) & set(ent.column_names)
        self.select = typed_select(ent, present, as_of)
        self.decided = self.select.decided if sql_typing else "false"

    def write(self, source: TextSource) -> None:
        table = self.writer.building
        # Afresh each time (a second reading replaces the first): a row's rowid is then its
        # index among the file's good records.
        self.writer.create(", __undecided BOOLEAN")
        declared = {c.name: c for c in self.writer.ent.columns}

        def text(i: int, name: str) -> str:
            raw = name in declared and typed_from_raw(declared[name])
            return text_column(i) if raw else cleaned(text_column(i))

        texts = ", ".join(f"{text(i, name)} as {quoted_name(name)}"
                          for i, name in enumerate(self.names))  # fmt: skip
        values = [f"{sql} as {quoted_name(name)}" for name, sql in self.select.values.items()]
        values += [quoted_name(n) for n in self.names if n not in self.writer.ent.column_names]
        self.con.execute(
            f"insert into {table} by name select {', '.join(values)}, "
            f"{sql_text(str(self.path))} as {SOURCE_FILE}, "
            f"not coalesce({self.decided}, false) as __undecided "
            f"from (select {texts} from {source.sql})",
            source.params,
        )

    def number_lines(self, physical: np.ndarray) -> None:
        """Every row's line: `physical[rowid]`, set run by run (the gap between a row's
        index and its line only grows, so a file has few runs of equal gaps)."""
        if not len(physical):
            return
        gap = physical - np.arange(len(physical), dtype=np.int64)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(gap)) + 1]).astype(np.int64)
        ends = np.append(starts[1:], len(physical)).astype(np.int64)
        runs = pa.table({"first_row": starts, "end_row": ends, "gap": gap[starts]})
        self.con.register("_line_runs", runs)
        try:
            table = self.writer.building
            self.con.execute(
                f"update {table} set {SOURCE_ROW} = {table}.rowid + r.gap from _line_runs r "
                f"where {table}.rowid >= r.first_row and {table}.rowid < r.end_row"
            )
        finally:
            self.con.unregister("_line_runs")

    def earlier_copies(self, staged: StagedCsv) -> pl.DataFrame:
        """Earlier occurrences of a repeated id, with where the last occurrence is. Blank
        ids are not duplicates of each other. (The ids are the key's cleaned text, as the
        side table holds it; their hashes find the few that may repeat first.)"""
        ent = self.writer.ent
        if ent.key is None:
            return pl.DataFrame(schema=DUPLICATES_SCHEMA)
        key, table = quoted_name(ent.key), self.writer.building
        found = self.con.sql(
            f"select rowid as {ROW_NUMBER}, max(rowid) over (partition by {key}) as winner "
            f"from {table} where {key} is not null and hash({key}) in (select h from "
            f"(select hash({key}) as h from {table} where {key} is not null) group by h "
            f"having count(*) > 1) qualify {ROW_NUMBER} <> winner"
        ).pl()
        return found.select(
            pl.col(ROW_NUMBER),
            pl.lit(str(staged.path)).alias("winner_file"),
            pl.Series("winner_row", staged.physical[found["winner"].to_numpy()], dtype=pl.Int64),
        )

    def left_for_polars(self, earlier: pl.DataFrame) -> np.ndarray:
        """The rows polars decides, ascending; they leave the side table (their text is
        returned by `text_batches` first)."""
        self.con.register("_earlier_copies", earlier.select(ROW_NUMBER).to_arrow())
        try:
            return self.con.sql(
                f"select rowid from {self.writer.building} where __undecided or rowid in "
                f"(select {ROW_NUMBER} from _earlier_copies) order by rowid"
            ).fetchnumpy()["rowid"].astype(np.int64)
        finally:
            self.con.unregister("_earlier_copies")

    def text_batches(
        self, staged: StagedCsv, rows: np.ndarray, size: int
    ) -> Iterator[pl.DataFrame]:
        """The text of `rows` (ascending) in batches of `size`, as read from the file, with
        the lineage columns polars needs; the declared columns the file lacks are null."""
        missing = [c for c in self.writer.ent.column_names if c not in self.names]
        names = {text_column(i): name for i, name in enumerate(self.names)}
        for first in range(0, len(rows), size):
            batch = rows[first : first + size]
            frame = staged.text_of(self.con, batch).rename(names)
            yield frame.with_columns(
                pl.Series(ROW_NUMBER, batch, dtype=pl.Int64),
                pl.lit(str(staged.path)).alias(SOURCE_FILE),
                pl.Series(SOURCE_ROW, staged.physical[batch], dtype=pl.Int64),
                *(pl.lit(None, dtype=pl.String).alias(c) for c in missing),
            )

    def settle(self, left: np.ndarray, staged: StagedCsv) -> None:
        """Remove the rows polars decided (it added the ones it loads again) and the
        column that served the decision."""
        table = self.writer.building
        self.con.register("_left_rows", pa.table({"r": left}))
        try:
            self.con.execute(f"delete from {table} where rowid in (select r from _left_rows)")
        finally:
            self.con.unregister("_left_rows")
        self.con.execute(f"alter table {table} drop column __undecided")
        self.writer.loaded += staged.rows - len(left)


def discard(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop an entity's side tables (a staging that is not to be published)."""
    con.execute(f"DROP TABLE IF EXISTS {side_table(name)}")
    con.execute(f"DROP TABLE IF EXISTS {side_table(name)}__rejected")


def drop_leftover_side_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Side tables a killed run left behind (one run per warehouse holds the lock, so
    none belongs to a running load)."""
    leftovers = con.execute(
        "select table_name from information_schema.tables where table_schema = 'raw' "
        "and starts_with(table_name, '__loading_')"
    ).fetchall()
    for (table,) in leftovers:
        con.execute(f'DROP TABLE IF EXISTS raw."{table}"')


def publish(
    con: duckdb.DuckDBPyConnection,
    staged: list[LoadCounts],
    before_swap: BeforeSwap | None = None,
    sources: dict[str, unchanged.Source | None] | None = None,
) -> None:
    """Swap every staged entity in, in one transaction. `before_swap` may refuse (raise):
    then nothing is replaced and the side tables are dropped. What each entity was loaded
    from (`sources`, by entity) is recorded in the same transaction, so that a later run
    knows an unchanged source; an entity without one has its record dropped."""
    sources = sources or {}
    unchanged.ensure_table(con)
    con.execute("BEGIN TRANSACTION")
    try:
        if before_swap is not None:
            before_swap(con, staged)
        for counts in staged:
            name = counts.entity
            con.execute(f"DROP TABLE IF EXISTS raw.{name}")
            con.execute(f"ALTER TABLE {side_table(name)} RENAME TO {name}")
            con.execute(f"DROP TABLE IF EXISTS raw.{name}__rejected")
            con.execute(f"ALTER TABLE {side_table(name)}__rejected RENAME TO {name}__rejected")
            unchanged.record(con, name, sources.get(name), counts.rows_in, counts.loaded,
                             counts.rejected)  # fmt: skip
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        for counts in staged:
            discard(con, counts.entity)
        raise


def write_batches(
    con: duckdb.DuckDBPyConnection,
    ent: Entity,
    batches: Iterable[pl.DataFrame],
    extras: list[str],
    duplicates: pl.DataFrame,
    reader_rejects: pl.DataFrame,
    rows_in: int,
    source: str,
    as_of: date | None = None,
) -> LoadCounts:
    writer = RawWriter(con, ent, extras)
    try:
        for batch in batches:
            writer.add(*process_batch(batch, ent, duplicates, as_of))
        return writer.finish(reader_rejects, rows_in, source)
    except BaseException:
        discard(con, ent.name)
        raise


def stage_entity(
    con: duckdb.DuckDBPyConnection,
    name: str,
    extract_dir: Path,
    fmt: str = "csv",
    batch_rows: int = BATCH_ROWS,
    as_of: date | None = None,
    accept_incomplete: bool = False,
    sql_typing: bool = True,
) -> LoadCounts:
    """Read, type and validate one entity into its side tables (nothing is replaced yet).

    `as_of` is the day the extract describes (dates of birth may not lie after it);
    `accept_incomplete` loads a Cliniko pull whose pages do not add up, on purpose. A CSV
    file's rows of plain text are typed in SQL and the rest in polars; `sql_typing=False`
    sends every row through polars (the reference the SQL path is tested against).
    """
    ent = entity(name)
    extract_dir = Path(extract_dir)
    check_format(extract_dir, fmt)
    no_duplicates = pl.DataFrame(schema=DUPLICATES_SCHEMA)
    found = entity_source(extract_dir, ent, fmt)
    if found.kind == "cliniko" or found.path is None:
        if found.path is not None:
            text, reader_rejects, rows_in = cliniko.read_cliniko_text(
                extract_dir, ent, accept_incomplete
            )
            source = str(found.path)
        else:
            text, reader_rejects, rows_in, source = empty_text(ent), empty_rejected(), 0, ""
        text = text.with_row_index(ROW_NUMBER).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))
        duplicates = last_occurrences(text, ent.key) if ent.key else no_duplicates
        return write_batches(
            con, ent, [text], [], duplicates, reader_rejects, rows_in, source, as_of
        )
    names = column_names(found.path, ent)
    writer = RawWriter(con, ent, [n for n in names if n not in ent.column_names])
    try:
        rows = CsvRows(con, writer, names, found.path, as_of, sql_typing)
        with tempfile.TemporaryDirectory() as folder:
            staged = stage_csv(con, found.path, ent, names, rows.write, writer.building,
                               Path(folder))  # fmt: skip
            rows.number_lines(staged.physical)
            earlier = rows.earlier_copies(staged)
            left = rows.left_for_polars(earlier)
            # Polars' loaded rows are added before the rows it decided leave.
            for batch in rows.text_batches(staged, left, batch_rows):
                writer.add(*process_batch(batch, ent, earlier, as_of))
            rows.settle(left, staged)
        return writer.finish(staged.rejected, staged.records, str(found.path))
    except BaseException:
        discard(con, ent.name)
        raise


def load_entity(
    con: duckdb.DuckDBPyConnection,
    name: str,
    extract_dir: Path,
    fmt: str = "csv",
    batch_rows: int = BATCH_ROWS,
    as_of: date | None = None,
    before_swap: BeforeSwap | None = None,
    sql_typing: bool = True,
) -> LoadResult:
    """Stage and publish one entity on its own (tests, tools); a pipeline run loads the
    whole extract with `load_all`, so that it is swapped in as one."""
    started = time.perf_counter()
    counts = stage_entity(con, name, extract_dir, fmt, batch_rows, as_of,
                          sql_typing=sql_typing)  # fmt: skip
    publish(con, [counts], before_swap)
    return _result(counts, time.perf_counter() - started)


def _result(counts: LoadCounts, seconds: float) -> LoadResult:
    return LoadResult(
        entity=counts.entity,
        rows_in=counts.rows_in,
        loaded=counts.loaded,
        rejected=counts.rejected,
        source=counts.source,
        seconds=seconds,
    )


def load_all(
    con: duckdb.DuckDBPyConnection,
    extract_dir: Path,
    fmt: str = "csv",
    as_of: date | None = None,
    before_swap: BeforeSwap | None = None,
    before_stage: Callable[[Entity], None] | None = None,
    accept_incomplete: bool = False,
    after_stage: Callable[[LoadResult], None] | None = None,
) -> dict[str, LoadResult]:
    """Stage every entity, then publish them all in one transaction.

    A file-level problem of any entity (or a refusal by `before_swap`) replaces nothing;
    every entity's file-level problem is reported at once. `before_stage` runs before each
    entity is read (the pipeline counts the file independently there). An entity whose
    source is the one already loaded under the same conditions (`ingest.unchanged`) is
    neither read nor staged: its tables stay, and its result says so. `after_stage` hears
    of each entity as it is staged or kept (progress).
    """
    staged: list[LoadCounts] = []
    kept: dict[str, unchanged.Recorded] = {}
    sources: dict[str, unchanged.Source | None] = {}
    seconds: dict[str, float] = {}
    problems: list[str] = []
    check_format(extract_dir, fmt)
    check_file_names(Path(extract_dir))
    drop_leftover_side_tables(con)
    conditions = unchanged.conditions(fmt, as_of, accept_incomplete)
    live = {t for (t,) in con.execute(
        "select table_name from information_schema.tables where table_schema = 'raw'"
    ).fetchall()}  # fmt: skip
    try:
        for ent in ENTITIES:
            started = time.perf_counter()
            try:
                found = entity_source(Path(extract_dir), ent, fmt)
                now, last = None, None
                if found.path is not None:
                    now, last = unchanged.compare(con, ent.name, found.path, conditions)
                in_place = {ent.name, f"{ent.name}__rejected"} <= live
                if last is not None and in_place:
                    kept[ent.name] = last
                    seconds[ent.name] = time.perf_counter() - started
                    if after_stage is not None:
                        after_stage(_kept_result(last, seconds[ent.name], ent.name))
                    continue
                sources[ent.name] = now
                if before_stage is not None:
                    before_stage(ent)
                staged.append(stage_entity(con, ent.name, extract_dir, fmt, as_of=as_of,
                                           accept_incomplete=accept_incomplete))  # fmt: skip
                seconds[ent.name] = time.perf_counter() - started
                if after_stage is not None:
                    after_stage(_result(staged[-1], seconds[ent.name]))
            except ExtractFileError as err:
                problems.append(str(err))
                seconds[ent.name] = time.perf_counter() - started
        if problems:
            raise ExtractFileError("\n".join(problems))
        publish(con, staged, before_swap, sources)
    except BaseException:
        for counts in staged:
            discard(con, counts.entity)
        raise
    results = {c.entity: _result(c, seconds[c.entity]) for c in staged}
    for name, last in kept.items():
        results[name] = _kept_result(last, seconds[name], name)
    return {ent.name: results[ent.name] for ent in ENTITIES}


def _kept_result(last: unchanged.Recorded, seconds: float, name: str) -> LoadResult:
    return LoadResult(name, last.rows_in, last.loaded, last.rejected, last.source.path,
                      seconds, unchanged=True)  # fmt: skip
