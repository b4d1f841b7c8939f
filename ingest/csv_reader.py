"""Reading one canonical CSV extract file, losing nothing: its good records go, as text
columns, to a writer (`WriteRecords`), and every bad one gets a reason.

First the bytes are scanned for where every record starts and ends (`csv_layout`): that
gives each record its physical line number and full original text, and finds quotes that
are never closed, whose lines are rejected on their own instead of swallowing the rest of
the file. DuckDB's CSV reader then does the parsing (RFC 4180 quoting, quoted line breaks,
CRLF, a UTF-8 BOM) and collects malformed records (wrong field count, stray quotes, invalid
UTF-8) instead of failing the file. Its reports are matched to the scanned records by byte
offset; should the two ever disagree on where records are, Python's csv parser splits the
scanned records instead, so line numbers are always right.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from ingest.csv_layout import (
    CsvLayout,
    OffsetMap,
    blank_out_lines,
    record_text,
    scan_layout,
)
from ingest.entities import Entity
from ingest.parse import REJECTED_SCHEMA

_CHUNK = 64 * 1024 * 1024
_CR, _LF, _QUOTE = 13, 10, 34
# DuckDB refuses a record longer than its line limit (2 MiB by default): the limit is
# raised to the longest record the scan found, so a long value is read whole.
_DEFAULT_MAX_LINE = 2 * 1024 * 1024


class ExtractFileError(Exception):
    """A file-level problem: the whole entity fails with this message (no traceback)."""


def read_header(path: Path) -> list[str]:
    # Decode only the start of the file: a bad byte further down is a per-record problem.
    with path.open("rb") as fh:
        raw = fh.read(1024 * 1024)
    head = raw[:4096]
    # UTF-16 text of a CSV export (mostly ASCII) has a NUL beside almost every character;
    # a stray NUL or two is a record's problem, not the file's encoding.
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or head.count(b"\x00") > len(head) // 4:
        sign = (
            "it starts with a UTF-16 byte-order mark"
            if raw[:2] in (b"\xff\xfe", b"\xfe\xff")
            else "it has NUL bytes between the characters"
        )
        raise ExtractFileError(
            f"{path}: the file looks like UTF-16 text ({sign}), not UTF-8; "
            "re-export it as UTF-8 (in Excel: 'CSV UTF-8')"
        )
    start = raw.decode("utf-8-sig", errors="replace")
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


# Extra columns may not take the names ingest gives its own columns while loading.
RESERVED_COLUMNS = frozenset({"reason", "winner_file", "winner_row"})


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
        if key not in declared and (key.startswith("_") or key in RESERVED_COLUMNS):
            raise ExtractFileError(
                f"{path}: column {position + 1} of the header, '{name}', is a name ingest "
                "uses for its own bookkeeping (names starting with '_', and "
                f"{', '.join(sorted(RESERVED_COLUMNS))}); rename it or drop it"
            )
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


REJECT_REASONS = {
    "MISSING COLUMNS": "has fewer fields than the header ({detail}); a value is missing or a "
    "line break inside an unquoted value split the record",
    "TOO MANY COLUMNS": "has more fields than the header ({detail}); a value containing a comma "
    "probably lacks quotes",
    "UNQUOTED VALUE": "has a stray quote (text after a closing quote, or a quote that does not "
    "start a value); put the whole value in quotes and double every quote inside it",
    "INVALID UNICODE": "is not valid UTF-8 text; re-export the file as UTF-8",
    "INVALID ENCODING": "is not valid UTF-8 text; re-export the file as UTF-8",
    "LINE SIZE OVER MAXIMUM": "is longer than the maximum record size",
}
CR_IN_VALUE_REASON = (
    "record has a carriage return inside a quoted value, in a file whose line ends are mixed; "
    "read as a line end it would change the value: re-export the file with one kind of line "
    "end"
)
UNCLOSED_REASON = (
    "record opens a quoted value that is never closed; this line was read on its own and "
    "reading resumed on the next line; close the quote, or double it if it is part of the value"
)


def text_column(index: int) -> str:
    """The name of a file's field while it is text (header names never start with '_')."""
    return f"__c{index}"


@dataclass(frozen=True)
class TextSource:
    """The good records of a file as a query of text columns `text_column(i)`, in file
    order (a `read_csv` call or a table), for a `WriteRecords` to put where it wants."""

    sql: str
    params: list


# Puts every record of the source into the staged table (replacing what it held).
WriteRecords = Callable[[TextSource], None]


def _max_line(longest_record: int) -> int:
    return max(_DEFAULT_MAX_LINE, longest_record + 1024)


def _read_options(path: Path, field_count: int, longest_record: int) -> tuple[str, list]:
    """How DuckDB reads the records of an extract file: as text, strictly (RFC 4180)."""
    positional = {text_column(i): "VARCHAR" for i in range(field_count)}
    max_line = _max_line(longest_record)
    # DuckDB needs its read buffer to hold at least one whole record.
    buffer = max(16 * 1024 * 1024, 2 * max_line)
    options = (
        "header = true, auto_detect = false, columns = ?, delim = ',', quote = '\"', "
        f"escape = '\"', all_varchar = true, strict_mode = true, max_line_size = {max_line}, "
        f"buffer_size = {buffer}"
    )
    return options, [str(path), positional]


def _stage(
    con: duckdb.DuckDBPyConnection, path: Path, write: WriteRecords, rejects_name: str,
    field_count: int, max_line: int,
) -> pl.DataFrame:
    """Give the good records of `path` to `write` (file order is the order DuckDB reads
    them in); return DuckDB's rejects (strict RFC 4180)."""
    rejects, scans = f"{rejects_name}_rejects", f"{rejects_name}_scans"
    recording = f", store_rejects = true, rejects_table = '{rejects}', rejects_scan = '{scans}'"
    options, params = _read_options(path, field_count, max_line)
    write(TextSource(f"read_csv(?, {options}{recording})", params))
    try:
        return con.sql(
            f"select line_byte_position as position, error_type, error_message "
            f"from {rejects} order by line_byte_position"
        ).pl()
    finally:
        con.execute(f"drop table if exists {rejects}")
        con.execute(f"drop table if exists {scans}")


@dataclass
class StagedCsv:
    """A CSV file whose good records a `WriteRecords` has put in `table` (in file order,
    so a record's rowid is its index among the good records)."""

    table: str
    path: Path
    names: list[str]
    rows: int  # good records staged
    physical: np.ndarray  # line number of each staged record, by rowid
    rejected: pl.DataFrame  # malformed records
    records: int  # records in the file: staged + malformed
    # Where the staged records' bytes are, to read some of them again (`text_of`): the
    # file they were parsed from (the file itself, or its copy with LF line ends, in the
    # folder given to `stage_csv`), the length of its header, its layout and which of its
    # records were staged (by rowid; None: every record), the longest record, and whether
    # Python's parser split them; and the folder for the copies that reading makes.
    source: Path
    header_bytes: int
    layout: CsvLayout
    good: np.ndarray | None
    longest: int
    by_python: bool
    folder: Path

    def text_of(self, con: duckdb.DuckDBPyConnection, rows: np.ndarray) -> pl.DataFrame:
        """The text columns (`text_column(i)`) of the staged records `rows` (ascending
        rowids), split again by the parser that staged them, from their own bytes: the
        header and those records, copied into a file of their own."""
        field_count = len(self.names)
        starts, ends = self.layout.record_spans(rows if self.good is None else self.good[rows])
        if self.by_python:
            columns, reasons = _split_by_python(self.source, starts, ends, field_count)
            if any(reasons):
                raise RuntimeError(f"{self.path}: a staged record no longer splits")
            return _text_frame(columns, field_count)
        again = self.folder / f"again-{self.path.name}"
        # Records that follow each other in the file are copied as one run.
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        run_starts = starts[np.concatenate([[0], breaks])] if len(rows) else starts
        run_ends = ends[np.append(breaks - 1, len(rows) - 1)] if len(rows) else ends
        with self.source.open("rb") as fin, again.open("wb") as fout:
            fout.write(fin.read(self.header_bytes))
            for start, end in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
                fin.seek(start)
                while start < end:
                    block = fin.read(min(_CHUNK, end - start))
                    fout.write(block)
                    start += len(block)
        try:
            options, params = _read_options(again, field_count, self.longest)
            frame = con.sql(f"select * from read_csv(?, {options})", params=params).pl()
        finally:
            again.unlink(missing_ok=True)
        if frame.height != len(rows):
            raise RuntimeError(
                f"{self.path}: {len(rows)} staged records read again as {frame.height}"
            )
        return frame


def copy_with_lf_line_ends(source: Path, target: Path) -> tuple[np.ndarray, np.ndarray]:
    """Copy `source` with every CRLF and lone CR turned into LF, a chunk at a time, as
    Python's csv module reads line ends; returns the offsets (in the copy) of the line
    breaks made from a CR that was inside a quoted value, and of every LF that was a CRLF
    (so that an offset in the copy can be found again in `source`).

    Such a value would change (CR → LF); the records holding one are rejected, not
    loaded changed. (Quote parity decides what is inside a quoted value; a quote that is
    never closed makes every later CR look quoted, which only marks more records to check.)
    """
    inside = False  # within a quoted value at the start of the chunk
    removed = 0  # bytes dropped so far (the CR of each CRLF)
    inner: list[np.ndarray] = []
    shortened: list[np.ndarray] = []  # copy offsets of the LF of each CRLF
    position = 0  # offset in the source of the chunk's first byte
    with source.open("rb") as fin, target.open("wb") as fout:
        carry = b""
        while True:
            chunk = fin.read(_CHUNK)
            data = carry + chunk
            if not data:
                break
            if chunk and data.endswith(b"\r"):
                # Maybe the first half of a CRLF: decide with the next chunk.
                data, carry = data[:-1], b"\r"
            else:
                carry = b""
            array = np.frombuffer(data, np.uint8)
            crs = np.flatnonzero(array == _CR)
            quotes = np.flatnonzero(array == _QUOTE)
            if len(crs):
                following = array[np.minimum(crs + 1, len(array) - 1)]
                crlf = (crs + 1 < len(array)) & (following == _LF)
                keep = np.ones(len(array), bool)
                keep[crs[crlf]] = False
                out = array.copy()
                out[crs[~crlf]] = _LF
                quoted = (np.searchsorted(quotes, crs) + int(inside)) % 2 == 1
                # Where each quoted CR's line break lands in the copy.
                dropped_before = np.cumsum(~keep)[crs] - (~keep)[crs]
                inner.append(position - removed + crs[quoted] - dropped_before[quoted])
                # The CR of a CRLF is dropped: its LF lands where the CR was.
                shortened.append(position - removed + crs[crlf] - dropped_before[crlf])
                removed += int(np.count_nonzero(~keep))
                fout.write(out[keep].tobytes())
            else:
                fout.write(data)
            inside = (int(inside) + len(quotes)) % 2 == 1
            position += len(data)
            if not chunk:
                break
    empty = np.zeros(0, np.int64)
    return (
        np.concatenate(inner) if inner else empty,
        np.concatenate(shortened) if shortened else empty,
    )


# DuckDB's errors that say a record has the wrong number of fields.
_FIELD_COUNT_ERRORS = ("MISSING COLUMNS", "TOO MANY COLUMNS")


def _reasons(errors: pl.DataFrame, field_count: int, split: list[str]) -> list[str]:
    """The reason for each of DuckDB's `errors` (one per record). A record of the wrong
    number of fields is described as Python's parser splits it (`split`: its reason by
    `_split_by_python`, per error): the count in DuckDB's message comes from whichever of
    its threads met the record, and two reads of one file can give two counts."""
    reasons = []
    rows = errors.select("error_type", "error_message").iter_rows()
    for (error_type, message), by_python in zip(rows, split, strict=True):
        template = REJECT_REASONS.get(error_type)
        if template is None:
            reasons.append(f"record could not be parsed: {message}")
            continue
        if error_type in _FIELD_COUNT_ERRORS and by_python:
            reasons.append(by_python)
            continue
        found = message.split("Found:")[-1].strip() if "Found:" in message else "?"
        detail = f"header has {field_count}, record has {found}"
        reasons.append("record " + template.replace("{detail}", detail))
    return reasons


def _python_split(
    con: duckdb.DuckDBPyConnection, source: Path, layout: CsvLayout, keep: np.ndarray,
    write: WriteRecords, field_count: int,
) -> tuple[np.ndarray, list[str]]:
    """Split the scanned records `keep` into fields with Python's csv parser and stage them.

    The fallback for a file whose records DuckDB splits differently from the scan: slower,
    but every record keeps its true line. Returns the staged records and, for every record
    of `keep`, a reason ('' when staged).
    """
    starts, ends = layout.record_spans(keep)
    columns, split = _split_by_python(source, starts, ends, field_count)
    staged = [index for index, reason in zip(keep.tolist(), split, strict=True) if not reason]
    con.register("_python_split", _text_frame(columns, field_count).to_arrow())
    try:
        write(TextSource("_python_split", []))
    finally:
        con.unregister("_python_split")
    return np.array(staged, dtype=np.int64), split


def _split_by_python(
    source: Path, starts: np.ndarray, ends: np.ndarray, field_count: int
) -> tuple[list[list[str]], list[str]]:
    """The fields of the records at byte spans of `source`, by Python's csv parser: each
    column's values (of the records that split well) and, per record, a reason ('' when
    it split well)."""
    columns: list[list[str]] = [[] for _ in range(field_count)]
    reasons: list[str] = []
    with source.open("rb") as fh:
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            fh.seek(start)
            raw = fh.read(end - start)
            try:
                text = raw.decode("utf-8")
                fields = next(csv.reader(io.StringIO(text, newline="")), [])
            except UnicodeDecodeError:
                reasons.append("record " + REJECT_REASONS["INVALID UNICODE"])
                continue
            except csv.Error as err:
                reasons.append(f"record could not be parsed: {err}")
                continue
            if len(fields) != field_count:
                kind = "MISSING COLUMNS" if len(fields) < field_count else "TOO MANY COLUMNS"
                detail = f"header has {field_count}, record has {len(fields)}"
                reasons.append("record " + REJECT_REASONS[kind].replace("{detail}", detail))
                continue
            for column, value in zip(columns, fields, strict=True):
                column.append(value)
            reasons.append("")
    return columns, reasons


def _text_frame(columns: list[list[str]], field_count: int) -> pl.DataFrame:
    return pl.DataFrame(
        {text_column(i): values for i, values in enumerate(columns)},
        schema={text_column(i): pl.String for i in range(field_count)},
    )


def _parse(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    folder: Path,
    write: WriteRecords,
    rejects_name: str,
    field_count: int,
    layout: CsvLayout,
    changed: np.ndarray,
) -> tuple[CsvLayout, pl.DataFrame, OffsetMap | None]:
    """Stage the records of `source` with DuckDB, the lines of records it must not load
    (a quote never closed, a value that would change) emptied in a copy first; returns the
    layout, DuckDB's rejects and how to map its byte offsets back to `source`'s."""
    parsed_from, offsets = source, None
    withheld = withheld_lines(layout, changed)
    if len(withheld):
        parsed_from = folder / f"closed-{source.name}"
        offsets = blank_out_lines(source, parsed_from, layout, withheld)
    errors = _stage(con, parsed_from, write, rejects_name, field_count,
                    layout.max_record_bytes())  # fmt: skip
    return layout, errors, offsets


def withheld_lines(layout: CsvLayout, changed: np.ndarray) -> np.ndarray:
    """Every physical line of the records DuckDB is not given: lines whose quote is never
    closed, and the records whose value would change."""
    first = np.isin(layout.record_first_line, changed)
    spans = [
        np.arange(a, b + 1)
        for a, b in zip(layout.record_first_line[first], layout.record_last_line[first],
                        strict=True)
    ]  # fmt: skip
    return np.unique(np.concatenate([layout.unclosed_lines, *spans])).astype(np.int64)


def _read_beside_scan(
    con: duckdb.DuckDBPyConnection, path: Path, write: WriteRecords, rejects_name: str,
    field_count: int,
) -> tuple[CsvLayout, pl.DataFrame | None]:
    """Scan the layout of `path` on a thread while DuckDB reads the file as it is, as
    `_parse` reads a file with nothing to withhold or copy (most files); the two take turns
    on neither the same data nor the same core (numpy and DuckDB leave Python free).

    Returns the layout, and DuckDB's rejects when that reading is the one `_parse` would
    have made: no line ends to rewrite, no quote left open, no record beyond the default
    line limit. Otherwise (None) the reading is discarded and `_parse` reads again."""
    with ThreadPoolExecutor(1, thread_name_prefix="csv-layout") as pool:
        scanning = pool.submit(scan_layout, path, field_count)
        try:
            errors: pl.DataFrame | None = _stage(con, path, write, rejects_name, field_count, 0)
        except duckdb.Error:
            errors = None  # read again, as the layout says
        layout = scanning.result()
    as_it_is = (
        not (layout.has_lone_cr or layout.mixed_line_ends)
        and not len(layout.unclosed_lines)
        and _max_line(layout.max_record_bytes()) == _max_line(0)
    )
    return layout, errors if as_it_is else None


def column_names(path: Path, ent: Entity) -> list[str]:
    """The name of each column of the file, as the contract spells it (extra columns keep
    their own)."""
    return match_columns(path, read_header(path), ent)


def stage_csv(
    con: duckdb.DuckDBPyConnection, path: Path, ent: Entity, names: list[str],
    write: WriteRecords, table: str, folder: Path,
) -> StagedCsv:
    """Give the good records of `path` (columns `names`, from `column_names`) to `write`,
    which puts them in `table`; find the line of each and the reason for each bad one.
    Copies of the file are made in `folder`, which must outlive the `StagedCsv`."""
    field_count = len(names)
    rejects_name = f"staging_{ent.name}"
    layout, errors = _read_beside_scan(con, path, write, rejects_name, field_count)
    source, changed = path, np.zeros(0, np.int64)
    shortened = np.zeros(0, np.int64)
    offsets = None
    # `errors` is None when the file could not be read as it is.
    if errors is None and (layout.has_lone_cr or layout.mixed_line_ends):
        # DuckDB's strict reader stops at a carriage return that does not end a CRLF
        # file (a file mixing CRLF and LF, or a stray CR). Read a copy with LF line
        # ends, taking a lone CR as a line end too, as Python's CSV module does.
        source = folder / f"lf-{path.name}"
        inner_crs, shortened = copy_with_lf_line_ends(path, source)
        layout = scan_layout(source, field_count)
        # Records whose quoted value held a CR: it would read as LF, so they are
        # rejected rather than loaded changed.
        changed = layout.record_first_line[layout.records_spanning(inner_crs)]
    if errors is None:
        try:
            layout, errors, offsets = _parse(con, source, folder, write, rejects_name,
                                             field_count, layout, changed)  # fmt: skip
        except duckdb.Error as err:
            raise ExtractFileError(
                f"{path}: the file could not be read as CSV: {err}"
            ) from None
    rows = con.execute(f"select count(*) from {table}").fetchall()[0][0]

    unclosed = np.isin(layout.record_first_line, layout.unclosed_lines)
    would_change = np.isin(layout.record_first_line, changed) & ~unclosed
    withheld = unclosed | would_change
    # Where DuckDB says each faulty record starts: exactly in a file of CRLF line ends, one
    # byte late in a file of LF line ends (DuckDB 2.0), taken back to its line's start. A
    # report that still starts no record (it can be further off after a quoted line break)
    # sends the file to Python's parser below.
    positions = errors["position"].to_numpy().astype(np.int64)
    if offsets is not None:
        positions = offsets.original(positions)
    positions = layout.line_start_near(positions)
    reported = layout.records_at(positions, withheld_lines(layout, changed))
    # One report per record, even when DuckDB reports several errors for it.
    first_errors = errors.with_columns(pl.Series("record", reported)).unique(
        "record", keep="first", maintain_order=True
    )
    index = first_errors["record"].to_numpy()
    parsed = np.flatnonzero(~withheld)
    agree = (
        bool((index >= 0).all())
        and not withheld[index].any()
        and rows + len(index) == len(parsed)
    )
    by_python = not agree
    if agree:
        bad = np.zeros(layout.records, bool)
        bad[index] = True
        good = np.flatnonzero(~bad & ~withheld)
        _, split = _split_by_python(source, *layout.record_spans(index), field_count)
        rejected_index, rejected_reason = index, _reasons(first_errors, field_count, split)
    else:
        good, split_reasons = _python_split(con, source, layout, parsed, write, field_count)
        rows = len(good)
        failed = [i for i, r in enumerate(split_reasons) if r]
        rejected_index = parsed[failed] if failed else np.zeros(0, np.int64)
        rejected_reason = [split_reasons[i] for i in failed]

    all_rejected = np.concatenate(
        [rejected_index, np.flatnonzero(unclosed), np.flatnonzero(would_change)]
    ).astype(np.int64)
    reasons = [
        *rejected_reason,
        *[UNCLOSED_REASON] * int(unclosed.sum()),
        *[CR_IN_VALUE_REASON] * int(would_change.sum()),
    ]
    # The rejected records' text is read from the original file, exactly as it is.
    rejected = _rejected_frame(path, layout, all_rejected, reasons, shortened)
    lines = len(layout.line_starts)

    # Every record good (most files): the layout's own arrays serve, without a copy of
    # millions of numbers.
    every_record = len(good) == layout.records

    return StagedCsv(
        table=table,
        path=path,
        names=names,
        rows=rows,
        physical=(layout.record_first_line if every_record else layout.record_first_line[good])
        .astype(np.int64, copy=False),
        rejected=rejected,
        records=layout.records,
        source=source,
        header_bytes=int(layout.line_starts[layout.header_lines])
        if layout.header_lines < lines
        else layout.size,
        layout=layout,
        good=None if every_record else good,
        longest=layout.max_record_bytes(),
        by_python=by_python,
        folder=folder,
    )


def _rejected_frame(
    path: Path,
    layout: CsvLayout,
    records: np.ndarray,
    reasons: list[str],
    shortened: np.ndarray,
) -> pl.DataFrame:
    """Rejected records with their first line and their full original text.

    `layout` may be of a copy with LF line ends; `shortened` (copy offsets of the LFs that
    were CRLFs) turns its offsets back into `path`'s.
    """
    if not len(records):
        return pl.DataFrame(schema=REJECTED_SCHEMA)
    starts, ends = layout.record_spans(records)
    starts = starts + np.searchsorted(shortened, starts, side="left")
    ends = ends + np.searchsorted(shortened, ends, side="left")
    with path.open("rb") as fh:
        texts = [record_text(fh, s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    return pl.DataFrame(
        {
            "source_file": [str(path)] * len(records),
            "source_row": layout.record_first_line[records],
            "reason": reasons,
            "record": texts,
        },
        schema=REJECTED_SCHEMA,
    ).sort("source_row")
