"""Reading one canonical CSV extract file into text columns, losing nothing.

DuckDB's CSV reader does the parsing (RFC 4180 quoting, quoted line breaks, CRLF, a
UTF-8 BOM) and collects malformed records (wrong field count, stray quotes, invalid
UTF-8) instead of failing the file. Each record's physical line number in the file is
worked out separately by a vectorised scan of the bytes, so that a rejected or loaded
row can always be found again in an editor.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from ingest.entities import ROW_NUMBER, SOURCE_FILE, SOURCE_ROW, Entity
from ingest.parse import REJECTED_SCHEMA

_CHUNK = 64 * 1024 * 1024
_NEWLINE, _QUOTE, _CR = 10, 34, 13


class ExtractFileError(Exception):
    """A file-level problem: the whole entity fails with this message (no traceback)."""


def read_header(path: Path) -> list[str]:
    # Decode only the start of the file: a bad byte further down is a per-record problem.
    with path.open("rb") as fh:
        start = fh.read(1024 * 1024).decode("utf-8-sig", errors="replace")
    try:
        header = next(csv.reader(io.StringIO(start, newline="")))
    except StopIteration:
        raise ExtractFileError(
            f"{path}: the file is empty; a CSV extract needs at least a header row"
        ) from None
    if any("\ufffd" in name for name in header):
        raise ExtractFileError(
            f"{path}: the header row is not valid UTF-8; re-export the file as UTF-8"
        )
    return header


def match_columns(path: Path, header: list[str], ent: Entity) -> list[str]:
    """Map header names to contract names (case and surrounding space ignored).

    Returns the column name to use for each header position; extra columns keep
    their own (trimmed) names.
    """
    declared = {name.lower(): name for name in ent.column_names}
    names = [declared.get(h.strip().lower(), h.strip()) for h in header]
    seen: dict[str, int] = {}
    for position, name in enumerate(names):
        if not name:
            raise ExtractFileError(
                f"{path}: column {position + 1} of the header has no name; "
                "give every column a name or remove the empty one"
            )
        key = name.lower()
        if key in seen:
            raise ExtractFileError(
                f"{path}: column '{header[position].strip()}' appears twice in the header "
                f"(columns {seen[key] + 1} and {position + 1}); keep one of them"
            )
        seen[key] = position
    missing = [c for c in ent.required_columns if c.lower() not in seen]
    if missing:
        listed = ", ".join(f"'{c}'" for c in missing)
        raise ExtractFileError(
            f"{path}: required column {listed} is missing "
            f"(the header has: {', '.join(names)}); add the column, or rename the column "
            f"that holds it to the name the extract contract uses"
        )
    return names


def logical_line_starts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """For each logical line (a line break outside quotes ends one), its first physical
    line number (1-based) and whether it is blank.

    Quote parity decides whether a line break is inside a quoted field: RFC 4180 escapes a
    quote by doubling it, which keeps the parity right. The file is read in chunks into one
    reused buffer, so memory does not grow with the file.
    """
    size = path.stat().st_size
    ends: list[np.ndarray] = []  # byte offsets of line breaks that end a logical line
    ends_phys: list[np.ndarray] = []  # physical line number each such break ends
    before_end: list[np.ndarray] = []  # the byte just before each such break
    quotes_before = lines_before = 0
    previous_last = 0  # last byte of the previous chunk
    buffer = np.empty(_CHUNK, np.uint8)
    with path.open("rb", buffering=0) as fh:
        offset = 0
        while read := fh.readinto(memoryview(buffer)):
            chunk = buffer[:read]
            newlines = np.flatnonzero(chunk == _NEWLINE)
            quotes = np.flatnonzero(chunk == _QUOTE)
            outside = (quotes_before + np.searchsorted(quotes, newlines)) % 2 == 0
            kept = newlines[outside]
            ends.append(kept + offset)
            ends_phys.append(lines_before + np.flatnonzero(outside) + 1)
            previous = np.where(kept > 0, chunk[np.maximum(kept - 1, 0)], previous_last)
            before_end.append(previous.astype(np.uint8))
            quotes_before += len(quotes)
            lines_before += len(newlines)
            previous_last = int(chunk[-1])
            offset += read
    end_offsets = np.concatenate(ends) if ends else np.zeros(0, np.int64)
    end_lines = np.concatenate(ends_phys) if ends_phys else np.zeros(0, np.int64)
    end_previous = np.concatenate(before_end) if before_end else np.zeros(0, np.uint8)

    start_offsets = np.concatenate([[0], end_offsets + 1])
    start_lines = np.concatenate([[1], end_lines + 1])
    # A final line break ends the last line; it does not start another.
    keep = start_offsets < size
    start_offsets, start_lines = start_offsets[keep], start_lines[keep]
    count = len(start_offsets)
    stop_offsets = np.concatenate([end_offsets, [size]])[:count]
    # The byte before a line's end: for a one-byte line, that byte is the whole line.
    last_byte = np.concatenate([end_previous, [previous_last]])[:count]
    length = stop_offsets - start_offsets
    blank = (length == 0) | ((length == 1) & (last_byte == _CR))
    return start_lines.astype(np.int64), blank


REJECT_REASONS = {
    "MISSING COLUMNS": "has fewer fields than the header ({detail}); a value is missing or a "
    "line break inside an unquoted value split the record",
    "TOO MANY COLUMNS": "has more fields than the header ({detail}); a value containing a comma "
    "probably lacks quotes",
    "UNQUOTED VALUE": "has a stray or unterminated quote; the record (and text up to the next "
    "quote) could not be split into fields",
    "INVALID UNICODE": "is not valid UTF-8 text; re-export the file as UTF-8",
    "INVALID ENCODING": "is not valid UTF-8 text; re-export the file as UTF-8",
    "LINE SIZE OVER MAXIMUM": "is longer than the maximum record size",
}


def _stage(
    con: duckdb.DuckDBPyConnection, path: Path, table: str, field_count: int
) -> pl.DataFrame:
    """Copy the good records of `path` as text columns c0..cN into `table` (file order is
    the table's rowid order); return DuckDB's rejects (strict RFC 4180)."""
    positional = {f"c{i}": "VARCHAR" for i in range(field_count)}
    stem = table.rsplit(".", 1)[-1]  # rejects tables are temporary: no schema
    rejects, scans = f"{stem}_rejects", f"{stem}_scans"
    con.execute(
        f"create or replace table {table} as select * from read_csv(?, header = true, "
        "auto_detect = false, columns = ?, delim = ',', quote = '\"', escape = '\"', "
        f"all_varchar = true, store_rejects = true, rejects_table = '{rejects}', "
        f"rejects_scan = '{scans}', strict_mode = true)",
        [str(path), positional],
    )
    try:
        return con.sql(
            f"select line, error_type, error_message, csv_line from {rejects} order by line"
        ).pl()
    finally:
        con.execute(f"drop table if exists {rejects}")
        con.execute(f"drop table if exists {scans}")


@dataclass
class StagedCsv:
    """A CSV file copied into a staging table of the warehouse, read back in batches.

    Staging keeps memory flat however large the file: only one batch of rows is in
    Python at a time, and the whole-file questions (which ids repeat) are answered in SQL.
    """

    con: duckdb.DuckDBPyConnection
    table: str
    path: Path
    names: list[str]
    rows: int  # good records staged
    physical: np.ndarray  # line number of each staged record, by rowid
    rejected: pl.DataFrame  # malformed records
    records: int  # records in the file: staged + malformed

    def batches(self, size: int) -> Iterator[pl.DataFrame]:
        renames = {f"c{i}": n for i, n in enumerate(self.names)}
        for first in range(0, self.rows, size):
            frame = self.con.sql(
                f"select * from {self.table} where rowid >= {first} and rowid < {first + size} "
                "order by rowid"
            ).pl()
            yield frame.rename(renames).with_columns(
                pl.lit(str(self.path)).alias(SOURCE_FILE),
                pl.Series(SOURCE_ROW, self.physical[first : first + frame.height], dtype=pl.Int64),
                pl.int_range(first, first + frame.height, dtype=pl.Int64).alias(ROW_NUMBER),
            )

    def duplicates(self, key: str) -> pl.DataFrame:
        """Earlier occurrences of a repeated id, with where the last occurrence is.
        Blank ids are not duplicates of each other."""
        column = f"c{self.names.index(key)}"
        found = self.con.sql(
            f"""
            select rowid as {ROW_NUMBER}, max(rowid) over (partition by k) as winner
            from (select rowid, nullif(trim({column}, ' \t\r\n'), '') as k from {self.table})
            where k is not null
            qualify {ROW_NUMBER} <> winner
            """
        ).pl()
        return found.select(
            pl.col(ROW_NUMBER),
            pl.lit(str(self.path)).alias("winner_file"),
            pl.Series("winner_row", self.physical[found["winner"].to_numpy()], dtype=pl.Int64),
        )

    def drop(self) -> None:
        self.con.execute(f"drop table if exists {self.table}")


def copy_with_lf_line_ends(source: Path, target: Path) -> bool:
    """Copy `source` with CRLF and lone CR turned into LF, a chunk at a time; returns
    whether there was any CR to turn."""
    found = pending_cr = False
    with source.open("rb") as fin, target.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            if pending_cr:
                chunk, pending_cr = b"\r" + chunk, False
            if chunk.endswith(b"\r"):  # maybe the first half of a CRLF: decide with the next
                chunk, pending_cr = chunk[:-1], True
            found = found or b"\r" in chunk
            fout.write(chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
        if pending_cr:
            fout.write(b"\n")
            found = True
    return found


def stage_csv(con: duckdb.DuckDBPyConnection, path: Path, ent: Entity) -> StagedCsv:
    """Stage `path` in the warehouse as text, named per the contract, with line numbers."""
    header = read_header(path)
    names = match_columns(path, header, ent)
    table = f"raw.__staging_{ent.name}"
    con.execute("create schema if not exists raw")
    try:
        errors = _stage(con, path, table, len(names))
    except duckdb.Error as err:
        # DuckDB's strict reader stops at a carriage return that does not end a CRLF file
        # (a file mixing CRLF and LF, or a stray CR). Read a copy with LF line ends, taking a
        # lone CR as a line end too, as Python's CSV module and old Mac exports do.
        if "invalid state" not in str(err):
            raise ExtractFileError(f"{path}: the file could not be read as CSV: {err}") from None
        with tempfile.TemporaryDirectory() as tmp:
            normalised = Path(tmp) / path.name
            if not copy_with_lf_line_ends(path, normalised):
                raise ExtractFileError(
                    f"{path}: the file could not be read as CSV: {err}"
                ) from None
            try:
                errors = _stage(con, normalised, table, len(names))
            except duckdb.Error as err2:
                raise ExtractFileError(
                    f"{path}: the file could not be read as CSV: {err2}"
                ) from None
    rows = con.execute(f"select count(*) from {table}").fetchall()[0][0]

    starts, blank = logical_line_starts(path)
    # Staged rows are in file order; they are the non-blank logical lines after the header
    # that DuckDB did not reject. The byte scan takes every quote as a quote, while a CSV
    # parser ignores one in the middle of an unquoted value; when such a quote makes the
    # two disagree, DuckDB's own record numbering is used instead of physical lines.
    rejected_lines = errors["line"].unique().to_numpy().astype(np.int64)
    logical = np.arange(1, len(starts) + 1)
    record_lines = logical[(logical > 1) & ~blank]
    good_lines = record_lines[~np.isin(record_lines, rejected_lines)]
    agree = len(good_lines) == rows and len(record_lines) == rows + len(rejected_lines)
    if agree:
        physical = starts[good_lines - 1]
    else:
        physical = np.arange(2, rows + 2)
        starts = np.arange(1, max(len(starts), int(rejected_lines.max(initial=0))) + 1)
    return StagedCsv(
        con=con,
        table=table,
        path=path,
        names=names,
        rows=rows,
        physical=physical.astype(np.int64),
        rejected=reject_rows(errors, starts, str(path), len(names)),
        # One record per staged row and per malformed record DuckDB reported.
        records=rows + len(rejected_lines),
    )


def reject_rows(
    errors: pl.DataFrame, starts: np.ndarray, source: str, field_count: int
) -> pl.DataFrame:
    if errors.is_empty():
        return pl.DataFrame(schema=REJECTED_SCHEMA)
    # One reason per record, even when DuckDB reports several errors for it.
    first = errors.group_by("line", maintain_order=True).first()
    lines = first["line"].to_numpy().astype(np.int64)
    physical = starts[np.clip(lines - 1, 0, len(starts) - 1)]
    reason = pl.col("error_type").replace_strict(
        {k: v for k, v in REJECT_REASONS.items()}, default=None
    )
    detail = pl.col("error_message").str.extract(r"Found:\s*(\d+)").fill_null("?")
    return first.with_columns(
        pl.Series("source_row", physical, dtype=pl.Int64),
    ).select(
        pl.lit(source).alias("source_file"),
        pl.col("source_row"),
        pl.when(reason.is_not_null())
        .then(
            pl.lit("record ")
            + reason.str.replace(
                "{detail}",
                pl.lit(f"header has {field_count}, record has ") + detail,
                literal=True,
            )
        )
        .otherwise(pl.lit("record could not be parsed: ") + pl.col("error_message"))
        .alias("reason"),
        pl.col("csv_line").str.strip_chars("\r\n").alias("record"),
    )
