"""Counting the records an extract holds, independently of the loader.

The asset check compares this count with what landed in `raw.<entity>` plus
`raw.<entity>__rejected`, so a row dropped anywhere in parsing shows up as a failure. The
count follows the extract contract's rule with its own machinery (Python's csv module,
line by line), not the loader's byte scan: a record the parser cannot close counts as one
record of its first line, and counting resumes on the next line. A file that one reader
reads from start to end without a fault is counted by that one reader (the same count,
several times faster); any other is counted record by record. A file without a single
quote character, blank line or lone CR, where every line after the header is one record,
is counted by its line breaks (numpy; five times faster again).
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ingest.csv_layout import MAX_RECORD_BYTES
from ingest.csv_reader import ExtractFileError
from ingest.entities import Entity
from ingest.sources import count_source_rows


class _Lines:
    """Physical lines of a text file, numbered, with the lines of a record that could not be
    closed given back to be read again."""

    def __init__(self, lines: Iterator[str]) -> None:
        self.lines = enumerate(lines, start=1)
        self.returned: deque[tuple[int, str]] = deque()
        self.taken: list[tuple[int, str]] = []
        self.taken_chars = 0

    def begin(self) -> None:
        self.taken, self.taken_chars = [], 0

    def give_back(self, lines: list[tuple[int, str]]) -> None:
        self.returned.extendleft(reversed(lines))

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.taken_chars > MAX_RECORD_BYTES:
            raise StopIteration  # a value this long is never closed: end the record here
        numbered = self.returned.popleft() if self.returned else next(self.lines)
        self.taken.append(numbered)
        self.taken_chars += len(numbered[1])
        return numbered[1]


def _next_record(lines: _Lines, field_count: int | None) -> tuple[list[str] | None, int | None]:
    """(fields or None, the record's first line or None at the end of the file). A record
    that cannot be closed gives back all its lines but the first."""
    lines.begin()
    try:
        fields = next(csv.reader(lines, strict=True))
    except StopIteration:
        if not lines.taken:
            return None, None
        fields = None
    except csv.Error:
        fields = None
    first = lines.taken[0][0]
    spans = len(lines.taken) > 1
    if fields is None or (spans and field_count is not None and len(fields) != field_count):
        lines.give_back(lines.taken[1:])
        return None, first
    return fields, first


def csv_record_lines(path: Path) -> Iterator[int]:
    """The line on which each record after the header starts (blank lines are not records)."""
    csv.field_size_limit(MAX_RECORD_BYTES)
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        lines = _Lines(iter(fh))
        header, first = _next_record(lines, None)
        if first is None:
            return
        field_count = len(header) if header is not None else None
        while True:
            fields, first = _next_record(lines, field_count)
            if first is None:
                return
            if fields != []:  # [] is a blank line
                yield first


class _Unusual(Exception):
    """A file the quick count cannot vouch for: counted record by record instead."""


def _quick_count(path: Path) -> int:
    """The records of a file that one reader reads cleanly from start to end: no record
    fails to parse, and none that spans lines has the wrong number of fields. Such a file
    is read the same by one reader as by a fresh reader per record; any other raises
    `_Unusual`."""
    csv.field_size_limit(MAX_RECORD_BYTES)
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                return 0
            field_count, records, line = len(header), 0, reader.line_num
            for fields in reader:
                spans = reader.line_num - line > 1
                line = reader.line_num
                if not fields:
                    continue  # a blank line
                # A record over lines, of the wrong width or long enough that the record
                # by record count would end it early (its text is at most twice its
                # values, quotes doubled, plus quotes and commas), is for that count.
                if spans and (len(fields) != field_count or 2 * sum(map(len, fields))
                              + 3 * len(fields) >= MAX_RECORD_BYTES):
                    raise _Unusual
                records += 1
        except csv.Error:
            raise _Unusual from None
    return records


_CHUNK = 64 * 1024 * 1024
_LF, _CR = 10, 13


class _Chunks:
    """A file read a chunk at a time into one reused buffer (a chunk is valid until the
    next), with the positions of a byte in it found through one reused mask: a fresh
    array of a chunk's size per step would be new pages from the system every time."""

    def __init__(self) -> None:
        self.raw = bytearray(_CHUNK)
        self.data = np.frombuffer(self.raw, np.uint8)
        self.mask = np.empty(_CHUNK, bool)

    def of(self, path: Path) -> Iterator[np.ndarray]:
        with path.open("rb", buffering=0) as fh:
            while read := fh.readinto(self.raw):
                yield self.data[:read]

    def holds(self, chunk: np.ndarray, byte: bytes) -> bool:
        return self.raw.find(byte, 0, len(chunk)) >= 0  # memchr

    def where(self, chunk: np.ndarray, byte: int) -> np.ndarray:
        return np.flatnonzero(np.equal(chunk, byte, out=self.mask[: len(chunk)]))


def count_lines(path: Path) -> int:
    """Non-empty lines after the header: a quick stand-in for the number of records."""
    chunks = _Chunks()
    lines = blank = 0
    previous = _LF
    for chunk in chunks.of(path):
        breaks = chunks.where(chunk, _LF)
        lines += len(breaks)
        # A line break right after another (or after CR LF) ends an empty line.
        before = np.where(breaks > 0, chunk[np.maximum(breaks - 1, 0)], previous)
        blank += int(np.count_nonzero(before == _LF))
        previous = int(chunk[-1])
    if previous != _LF:
        lines += 1  # the last line has no line break
    return max(lines - blank - 1, 0)


# A file at most this long is counted line by line for the estimate (exact, and quick).
ESTIMATE_SAMPLE = 4 * 1024 * 1024


def estimate_lines(path: Path) -> int:
    """About how many records follow the header, without reading the whole file: exact
    (`count_lines`) for a file of up to ESTIMATE_SAMPLE bytes, else the file's length
    over the mean length of the lines in its first ESTIMATE_SAMPLE bytes. What the
    progress estimate goes by before the file is read; never a count anything is
    checked against (the independent count, `count_input_rows`, is)."""
    size = path.stat().st_size
    if size <= ESTIMATE_SAMPLE:
        return count_lines(path)
    with path.open("rb") as fh:
        head = fh.read(ESTIMATE_SAMPLE)
    header_end = head.find(b"\n") + 1
    breaks = head.count(b"\n", header_end)
    if breaks == 0:
        return 1
    return round((size - header_end) / ((len(head) - header_end) / breaks))


def _count_lines_without_quotes(path: Path) -> int | None:
    """The records of a file without a single quote character, blank line or lone CR, or
    None for any other file. In such a file no value can hold a line break, so each line
    after the header is one record, as Python's csv module would read it: the line breaks
    are counted (numpy, a chunk at a time), many times faster than splitting the records."""
    chunks = _Chunks()
    newlines = 0
    # The two bytes before the chunk; as if a line ended just before the file, so that a
    # blank first line is seen like any other.
    before, before2 = _LF, -1
    cr_at_end = False  # the previous chunk ended in a CR: the next byte must be its LF
    last = -1
    for chunk in chunks.of(path):
        if chunks.holds(chunk, b'"'):
            return None
        if cr_at_end and chunk[0] != _LF:
            return None
        lfs = chunks.where(chunk, _LF)
        newlines += len(lfs)
        # A blank line: a LF right after another line's LF, or after its CRLF's CR.
        one = np.where(lfs >= 1, chunk[np.maximum(lfs - 1, 0)], before)
        two = np.where(lfs >= 2, chunk[np.maximum(lfs - 2, 0)],
                       np.where(lfs == 1, before, before2))  # fmt: skip
        if ((one == _LF) | ((one == _CR) & (two == _LF))).any():
            return None
        if chunks.holds(chunk, b"\r"):
            crs = chunks.where(chunk, _CR)
            inside = crs[crs + 1 < len(chunk)]
            if (chunk[inside + 1] != _LF).any():
                return None  # a CR that is not part of a CRLF ends a line for csv
        cr_at_end = bool(chunk[-1] == _CR)
        before2 = int(chunk[-2]) if len(chunk) >= 2 else before
        before, last = int(chunk[-1]), int(chunk[-1])
    if cr_at_end:
        return None
    if last < 0:
        return 0  # an empty file has no header and no records
    return newlines + (last != _LF) - 1  # the header is not a record


def count_csv_records(path: Path) -> int:
    plain = _count_lines_without_quotes(path)
    if plain is not None:
        return plain
    try:
        return _quick_count(path)
    except _Unusual:
        return sum(1 for _ in csv_record_lines(path))


def count_input_rows(extract_dir: Path, ent: Entity, fmt: str) -> int:
    return count_source_rows(extract_dir, ent, fmt, count_csv_records)


class CountsAside:
    """The independent counts of the entities being loaded, made on a thread of their own
    while the loader reads: each count is the loader's check, not its input, so nothing
    waits for it until the swap (`results`). The loader spends most of its time in DuckDB,
    numpy and polars, which leave Python free for the count (one core of the csv module)."""

    def __init__(
        self, extract_dir: Path, fmt: str,
        count: Callable[[Path, Entity, str], int] = count_input_rows,
    ) -> None:  # fmt: skip
        self.extract_dir, self.fmt, self.count = Path(extract_dir), fmt, count
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="independent-count")
        self.pending: dict[str, Future[int]] = {}

    def start(self, ent: Entity) -> None:
        self.pending[ent.name] = self.pool.submit(self.count, self.extract_dir, ent, self.fmt)

    def results(self) -> dict[str, int]:
        """Every count started, once each is done; a count that failed refuses the extract."""
        counts = {}
        for name, future in self.pending.items():
            try:
                counts[name] = future.result()
            except Exception as err:  # noqa: BLE001 - any failure of the count is reported
                raise ExtractFileError(
                    f"{name}: the independent count of its source in {self.extract_dir} "
                    f"failed ({type(err).__name__}: {err}); nothing was replaced. Check that "
                    "the extract's files are still in place and readable, and run again"
                ) from None
        return counts

    def close(self) -> None:
        """Stop: counts not yet begun are dropped, and the one under way is waited for."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CountsAside:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
