"""Load one extract folder into the warehouse's `raw` schema, entity by entity.

For each entity: read text (CSV or Cliniko pages) → keep the last row of each duplicate
id → type → validate with pandera → replace `raw.<entity>` and `raw.<entity>__rejected`
in one transaction. Every input row ends in one of the two tables: rows in = rows loaded
+ rows rejected. A CSV file is staged in the warehouse and processed in batches, so
memory stays flat however large the extract is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from ingest import cliniko
from ingest.csv_reader import stage_csv
from ingest.entities import ENTITIES, ROW_NUMBER, SOURCE_FILE, SOURCE_ROW, Entity, entity
from ingest.parse import REJECTED_SCHEMA, clean_frame, parse_entity, typed_schema
from ingest.schemas import validate
from ingest.sources import check_format, entity_source
from ingest.warehouse import raw_columns_ddl, rejected_columns_ddl

BATCH_ROWS = 1_000_000
DUPLICATES_SCHEMA = {ROW_NUMBER: pl.Int64, "winner_file": pl.String, "winner_row": pl.Int64}
LINEAGE = (SOURCE_FILE, SOURCE_ROW, ROW_NUMBER)


@dataclass(frozen=True)
class LoadCounts:
    """What a load is about to put in place, shown to the checks that may still refuse it."""

    entity: str
    rows_in: int
    loaded: int
    rejected: int
    source: str


# Runs inside the transaction that swaps the new tables in: raising keeps the old ones.
BeforeSwap = Callable[[duckdb.DuckDBPyConnection, LoadCounts], None]


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
    parsed, parse_rejects = parse_entity(kept, ent, as_of)
    valid, failed = validate(parsed.drop(ROW_NUMBER), ent)
    rejected = pl.concat(
        [
            as_rejected(earlier.drop("winner_file", "winner_row")),
            parse_rejects.cast(REJECTED_SCHEMA),
            as_rejected(failed),
        ]
    )
    return valid.cast(typed_schema(ent)), rejected  # type: ignore[arg-type]


class RawWriter:
    """Builds `raw.<entity>` beside the live table and swaps it in with the rejected
    table in one short transaction, so readers see the old or the new load, never half.

    Batches are inserted into the side table as they come (one big transaction would
    hold every uncommitted row in memory).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, ent: Entity, extras: list[str]) -> None:
        self.con, self.ent = con, ent
        self.loaded = 0
        self.rejected: list[pl.DataFrame] = []
        self.building = f"raw.__loading_{ent.name}"
        extra_ddl = "".join(f', "{c}" VARCHAR' for c in extras)
        con.execute("CREATE SCHEMA IF NOT EXISTS raw")
        con.execute(f"CREATE OR REPLACE TABLE {self.building} ({raw_columns_ddl(ent)}{extra_ddl})")

    def add(self, valid: pl.DataFrame, rejected: pl.DataFrame) -> None:
        if valid.height:
            self.con.register("_loaded", valid.to_arrow())
            self.con.execute(f"INSERT INTO {self.building} BY NAME SELECT * FROM _loaded")
            self.con.unregister("_loaded")
        self.loaded += valid.height
        self.rejected.append(rejected)

    def commit(
        self,
        reader_rejects: pl.DataFrame,
        rows_in: int,
        source: str,
        before_swap: BeforeSwap | None = None,
    ) -> int:
        rejected = pl.concat([reader_rejects.cast(REJECTED_SCHEMA), *self.rejected]).sort(
            "source_file", "source_row"
        )
        name = self.ent.name
        self.con.execute("BEGIN TRANSACTION")
        try:
            if before_swap is not None:
                before_swap(
                    self.con, LoadCounts(name, rows_in, self.loaded, rejected.height, source)
                )
            self.con.execute(f"DROP TABLE IF EXISTS raw.{name}")
            self.con.execute(f"ALTER TABLE {self.building} RENAME TO {name}")
            self.con.execute(
                f"CREATE OR REPLACE TABLE raw.{name}__rejected ({rejected_columns_ddl()})"
            )
            self.con.register("_rejected", rejected.to_arrow())
            self.con.execute(f"INSERT INTO raw.{name}__rejected BY NAME SELECT * FROM _rejected")
            self.con.unregister("_rejected")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return rejected.height

    def abort(self) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {self.building}")


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
    before_swap: BeforeSwap | None = None,
) -> tuple[int, int]:
    writer = RawWriter(con, ent, extras)
    try:
        for batch in batches:
            writer.add(*process_batch(batch, ent, duplicates, as_of))
        rejected = writer.commit(reader_rejects, rows_in, source, before_swap)
    except BaseException:
        writer.abort()
        raise
    return writer.loaded, rejected


def load_entity(
    con: duckdb.DuckDBPyConnection,
    name: str,
    extract_dir: Path,
    fmt: str = "csv",
    batch_rows: int = BATCH_ROWS,
    as_of: date | None = None,
    before_swap: BeforeSwap | None = None,
) -> LoadResult:
    """Load one entity of an extract folder into `raw.<entity>` (+ `__rejected`).

    `as_of` is the day the extract describes (dates of birth may not lie after it);
    `before_swap` may refuse the load after every row is read and before anything is
    replaced (the guard against a shrunken extract uses it).
    """
    ent = entity(name)
    extract_dir = Path(extract_dir)
    started = time.perf_counter()
    check_format(extract_dir, fmt)
    no_duplicates = pl.DataFrame(schema=DUPLICATES_SCHEMA)

    found = entity_source(extract_dir, ent, fmt)
    if found.kind == "cliniko" or found.path is None:
        if found.path is not None:
            text, reader_rejects, rows_in = cliniko.read_cliniko_text(extract_dir, ent)
            source = str(found.path)
        else:
            text, reader_rejects, rows_in, source = empty_text(ent), empty_rejected(), 0, ""
        text = text.with_row_index(ROW_NUMBER).with_columns(pl.col(ROW_NUMBER).cast(pl.Int64))
        duplicates = last_occurrences(text, ent.key) if ent.key else no_duplicates
        loaded, rejected = write_batches(
            con, ent, [text], [], duplicates, reader_rejects, rows_in, source, as_of, before_swap
        )
    else:
        staged = stage_csv(con, found.path, ent)
        try:
            extras = [n for n in staged.names if n not in ent.column_names]
            missing = [c for c in ent.column_names if c not in staged.names]
            batches = (
                b.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing)
                for b in staged.batches(batch_rows)
            )
            duplicates = staged.duplicates(ent.key) if ent.key else no_duplicates
            rows_in, source = staged.records, str(found.path)
            loaded, rejected = write_batches(
                con, ent, batches, extras, duplicates, staged.rejected, rows_in, source, as_of,
                before_swap,
            )
        finally:
            staged.drop()
    return LoadResult(
        entity=ent.name,
        rows_in=rows_in,
        loaded=loaded,
        rejected=rejected,
        source=source,
        seconds=time.perf_counter() - started,
    )


def load_all(
    con: duckdb.DuckDBPyConnection,
    extract_dir: Path,
    fmt: str = "csv",
    as_of: date | None = None,
) -> dict[str, LoadResult]:
    return {ent.name: load_entity(con, ent.name, extract_dir, fmt, as_of=as_of) for ent in ENTITIES}
