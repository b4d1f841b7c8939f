"""Load one extract folder into the warehouse's `raw` schema, entity by entity.

For each entity: read text (CSV or Cliniko pages) → parse types → keep the last row of
each duplicate id → validate with pandera → replace `raw.<entity>` and
`raw.<entity>__rejected` in one transaction. Every input row ends in one of the two
tables: rows in = rows loaded + rows rejected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from ingest import cliniko
from ingest.csv_reader import ExtractFileError, read_csv_text
from ingest.entities import ENTITIES, SOURCE_FILE, SOURCE_ROW, Entity, entity
from ingest.parse import clean_frame, parse_entity, typed_schema
from ingest.schemas import validate
from ingest.warehouse import raw_columns_ddl, rejected_columns_ddl

FORMATS = ("csv", "cliniko")
REJECTED_SCHEMA = {
    "source_file": pl.String,
    "source_row": pl.Int64,
    "reason": pl.String,
    "record": pl.String,
}


@dataclass(frozen=True)
class LoadResult:
    entity: str
    rows_in: int
    loaded: int
    rejected: int
    source: str  # the file or folder read, or '' when the entity is absent
    seconds: float

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.loaded + self.rejected


def empty_text(ent: Entity) -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            **{c: pl.String for c in ent.column_names},
            SOURCE_FILE: pl.String,
            SOURCE_ROW: pl.Int64,
        }
    )


def read_text(
    extract_dir: Path, ent: Entity, fmt: str
) -> tuple[pl.DataFrame, pl.DataFrame, int, str]:
    """The entity's rows as text, reader-level rejects, records read, and the source."""
    if fmt not in FORMATS:
        raise ExtractFileError(f"unknown extract format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if not extract_dir.is_dir():
        raise ExtractFileError(f"{extract_dir}: the extract folder does not exist")
    if fmt == "cliniko" and ent.name in cliniko.mappings({}):
        folder = extract_dir / cliniko.mappings({})[ent.name][0]
        if folder.is_dir():
            return (*cliniko.read_cliniko_text(extract_dir, ent), str(folder))
        if ent.name in cliniko.REQUIRED_FOLDERS:
            raise ExtractFileError(
                f"{folder}: the '{folder.name}' folder is missing from the Cliniko extract; "
                "run `audiences extract cliniko` again or check --extracts"
            )
        return empty_text(ent), pl.DataFrame(schema=REJECTED_SCHEMA), 0, ""
    path = extract_dir / ent.file_name
    if path.is_file():
        return (*read_csv_text(path, ent), str(path))
    if ent.file_required and fmt == "csv":
        raise ExtractFileError(
            f"{path}: {ent.file_name} is missing; a canonical extract needs at least "
            "patients.csv and appointments.csv"
        )
    return empty_text(ent), pl.DataFrame(schema=REJECTED_SCHEMA), 0, ""


def keep_last_duplicates(text: pl.DataFrame, ent: Entity) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The last occurrence of each id wins; earlier ones are rejected as duplicates.

    This runs before typing, so the winner is the last row even when that row turns out
    to be invalid (it is then rejected for its own reason): an older version of a record
    never silently replaces a newer one.
    """
    if ent.key is None or text.is_empty():
        return text, text.head(0).with_columns(pl.lit(None, dtype=pl.String).alias("reason"))
    key = ent.key
    # Rows without an id are not duplicates of each other; validation rejects them.
    latest = pl.col(key).is_null() | pl.col(key).is_last_distinct()
    flagged = text.with_columns(latest.alias("_latest"))
    kept = flagged.filter(pl.col("_latest")).drop("_latest")
    earlier = flagged.filter(~pl.col("_latest")).drop("_latest")
    if not earlier.is_empty():
        winners = kept.filter(pl.col(key).is_in(earlier[key].implode())).select(
            key, pl.col(SOURCE_FILE).alias("_winner_file"), pl.col(SOURCE_ROW).alias("_winner_row")
        )
        earlier = (
            earlier.join(winners, on=key, how="left", maintain_order="left")
            .with_columns(
                (
                    pl.lit(f"duplicate {key} '")
                    + pl.col(key)
                    + pl.lit("': replaced by the later row at ")
                    + pl.col("_winner_file")
                    + pl.lit(":")
                    + pl.col("_winner_row").cast(pl.String)
                ).alias("reason")
            )
            .drop("_winner_file", "_winner_row")
        )
    else:
        earlier = earlier.with_columns(pl.lit(None, dtype=pl.String).alias("reason"))
    return kept, earlier


def as_rejected(frame: pl.DataFrame) -> pl.DataFrame:
    """Typed rows + a reason column → the rejected-table shape (record as JSON text)."""
    data = [c for c in frame.columns if c not in (SOURCE_FILE, SOURCE_ROW, "reason", "_index")]
    return frame.select(
        pl.col(SOURCE_FILE).alias("source_file"),
        pl.col(SOURCE_ROW).alias("source_row"),
        pl.col("reason"),
        pl.struct([pl.col(c).cast(pl.String) for c in data]).struct.json_encode().alias("record"),
    )


def write_entity(
    con: duckdb.DuckDBPyConnection, ent: Entity, loaded: pl.DataFrame, rejected: pl.DataFrame
) -> None:
    extras = [
        c
        for c in loaded.columns
        if c not in ent.column_names and c not in (SOURCE_FILE, SOURCE_ROW)
    ]
    extra_ddl = "".join(f', "{c}" VARCHAR' for c in extras)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"CREATE OR REPLACE TABLE raw.{ent.name} ({raw_columns_ddl(ent)}{extra_ddl})")
        con.register("_loaded", loaded.to_arrow())
        con.execute(f"INSERT INTO raw.{ent.name} BY NAME SELECT * FROM _loaded")
        con.unregister("_loaded")
        con.execute(f"CREATE OR REPLACE TABLE raw.{ent.name}__rejected ({rejected_columns_ddl()})")
        con.register("_rejected", rejected.to_arrow())
        con.execute(f"INSERT INTO raw.{ent.name}__rejected BY NAME SELECT * FROM _rejected")
        con.unregister("_rejected")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def prepare_entity(
    extract_dir: Path, ent: Entity, fmt: str
) -> tuple[pl.DataFrame, pl.DataFrame, int, str]:
    """Everything but the write: (rows to load, rejected rows, rows in, source)."""
    text, reader_rejects, rows_in, source = read_text(extract_dir, ent, fmt)
    kept, duplicates = keep_last_duplicates(clean_frame(text), ent)
    parsed, parse_rejects = parse_entity(kept, ent)
    valid, failed = validate(parsed, ent)
    rejected = pl.concat(
        [
            reader_rejects.cast(REJECTED_SCHEMA),
            parse_rejects.cast(REJECTED_SCHEMA),
            as_rejected(duplicates).cast(REJECTED_SCHEMA),
            as_rejected(failed).cast(REJECTED_SCHEMA),
        ]
    ).sort("source_file", "source_row")
    valid = valid.cast(typed_schema(ent))  # type: ignore[arg-type]
    return valid, rejected, rows_in, source


def load_entity(
    con: duckdb.DuckDBPyConnection, name: str, extract_dir: Path, fmt: str = "csv"
) -> LoadResult:
    ent = entity(name)
    started = time.perf_counter()
    valid, rejected, rows_in, source = prepare_entity(Path(extract_dir), ent, fmt)
    write_entity(con, ent, valid, rejected)
    return LoadResult(
        entity=ent.name,
        rows_in=rows_in,
        loaded=valid.height,
        rejected=rejected.height,
        source=source,
        seconds=time.perf_counter() - started,
    )


def load_all(
    con: duckdb.DuckDBPyConnection, extract_dir: Path, fmt: str = "csv"
) -> dict[str, LoadResult]:
    return {ent.name: load_entity(con, ent.name, extract_dir, fmt) for ent in ENTITIES}
