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

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from ingest import cliniko
from ingest.csv_reader import ExtractFileError, StagedCsv, stage_csv
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
from ingest.sql_typing import line_numbers, quoted_name, sql_text, typed_select

BATCH_ROWS = 1_000_000
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


def empty_rejected() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTED_SCHEMA)


def empty_text(ent: Entity) -> pl.DataFrame:
    columns = {c: pl.String for c in ent.column_names}
    return pl.DataFrame(schema={**columns, SOURCE_FILE: pl.String, SOURCE_ROW: pl.Int64})


def last_occurrences(text: pl.DataFrame, key: str) -> pl.DataFrame:
    """Earlier occurrences of a repeated id in an in-memory frame, with where the last one
    is (the same answer `StagedCsv.duplicates` gives in SQL for staged files)."""
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
        extra_ddl = "".join(f', "{c}" VARCHAR' for c in extras)
        con.execute("CREATE SCHEMA IF NOT EXISTS raw")
        con.execute(f"CREATE OR REPLACE TABLE {self.building} ({raw_columns_ddl(ent)}{extra_ddl})")

    def add_typed_in_sql(
        self, staged: StagedCsv, duplicates: pl.DataFrame, as_of: date | None
    ) -> np.ndarray:
        """Type the staged rows whose text has a plain shape in one SQL statement
        (`ingest.sql_typing`); returns the staged rows left for `add` (text of another
        shape, a check failed, or an earlier copy of a repeated id), ascending."""
        names = set(staged.names)
        select = typed_select(self.ent, names & set(self.ent.column_names), as_of)
        extras = [n for n in staged.names if n not in self.ent.column_names]
        line = line_numbers(staged.physical, "s.__staged_row")
        values = [f"{sql} as {quoted_name(name)}" for name, sql in select.values.items()]
        values += [quoted_name(name) for name in extras]
        runs = ""
        if line.runs is not None:
            self.con.register("_line_runs", pa.table(line.runs))
            runs = " asof join _line_runs __runs on s.__staged_row >= __runs.first_row"
        self.con.execute(f"alter table {self.building} add column __staged_row bigint")
        self.con.execute(f"alter table {self.building} add column __undecided boolean")
        try:
            self.con.execute(
                f"insert into {self.building} by name "
                f"select {', '.join(values)}, {sql_text(str(staged.path))} as {SOURCE_FILE}, "
                f"{line.expression} as {SOURCE_ROW}, s.__staged_row, "
                f"coalesce(not ({select.decided}), true) as __undecided "
                f"from ({staged.cleaned_text()}) s{runs}"
            )
            self.con.register("_earlier_copies", duplicates.select(ROW_NUMBER).to_arrow())
            left = f"__undecided or __staged_row in (select {ROW_NUMBER} from _earlier_copies)"
            undecided = self.con.sql(
                f"select __staged_row from {self.building} where {left} order by __staged_row"
            ).fetchnumpy()["__staged_row"]
            self.con.execute(f"delete from {self.building} where {left}")
            self.con.unregister("_earlier_copies")
        finally:
            if line.runs is not None:
                self.con.unregister("_line_runs")
        self.con.execute(f"alter table {self.building} drop column __staged_row")
        self.con.execute(f"alter table {self.building} drop column __undecided")
        self.loaded += staged.rows - len(undecided)
        return np.asarray(undecided, dtype=np.int64)

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
) -> None:
    """Swap every staged entity in, in one transaction. `before_swap` may refuse (raise):
    then nothing is replaced and the side tables are dropped."""
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
    staged = stage_csv(con, found.path, ent)
    try:
        extras = [n for n in staged.names if n not in ent.column_names]
        missing = [c for c in ent.column_names if c not in staged.names]
        duplicates = staged.duplicates(ent.key) if ent.key else no_duplicates
        writer = RawWriter(con, ent, extras)
        try:
            left = writer.add_typed_in_sql(staged, duplicates, as_of) if sql_typing else None
            for batch in staged.batches(batch_rows, left):
                batch = batch.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing)
                writer.add(*process_batch(batch, ent, duplicates, as_of))
            return writer.finish(staged.rejected, staged.records, str(found.path))
        except BaseException:
            discard(con, ent.name)
            raise
    finally:
        staged.drop()


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
) -> dict[str, LoadResult]:
    """Stage every entity, then publish them all in one transaction.

    A file-level problem of any entity (or a refusal by `before_swap`) replaces nothing;
    every entity's file-level problem is reported at once. `before_stage` runs before each
    entity is read (the pipeline counts the file independently there).
    """
    staged: list[LoadCounts] = []
    seconds: dict[str, float] = {}
    problems: list[str] = []
    check_format(extract_dir, fmt)
    check_file_names(Path(extract_dir))
    drop_leftover_side_tables(con)
    try:
        for ent in ENTITIES:
            started = time.perf_counter()
            try:
                if before_stage is not None:
                    before_stage(ent)
                staged.append(stage_entity(con, ent.name, extract_dir, fmt, as_of=as_of,
                                           accept_incomplete=accept_incomplete))  # fmt: skip
            except ExtractFileError as err:
                problems.append(str(err))
            seconds[ent.name] = time.perf_counter() - started
        if problems:
            raise ExtractFileError("\n".join(problems))
        publish(con, staged, before_swap)
    except BaseException:
        for counts in staged:
            discard(con, counts.entity)
        raise
    return {c.entity: _result(c, seconds[c.entity]) for c in staged}
