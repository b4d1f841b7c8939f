"""Where each record of a CSV file starts and ends, worked out from its bytes.

A record ends at the end of its line unless a quoted value runs on past it. A line whose
quotes all sit where RFC 4180 puts them (opening a value after a comma or at the start of
the line, closing one before a comma or the end of the line, or doubled inside a value)
and come in an even number opens no such value. Every other line (an odd number of quotes,
or a quote inside an unquoted value such as `5'10" tall`, rare in a real extract) is read
with Python's csv parser to find where its record ends. A record the parser cannot close,
or one that runs over several lines with the wrong number of fields, is rejected on its own
and reading resumes on the next line: one stray quote never swallows the records after it.

The file is read in chunks into one reused buffer, so memory does not grow with the
file beyond a few arrays of one number per line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np

_CHUNK = 64 * 1024 * 1024
_NEWLINE, _QUOTE, _CR, _COMMA = 10, 34, 13, 44
# A quoted value that would run on for more than this is taken as never closed: no
# practice-management export has a single value of this size.
MAX_RECORD_BYTES = 256 * 1024 * 1024
_LINES_AT_ONCE = 1 << 20


@dataclass(frozen=True)
class CsvLayout:
    """The records of a CSV file as physical line numbers and byte spans.

    Line numbers are 1-based, as an editor shows them. The header is not a record.
    """

    size: int
    line_starts: np.ndarray  # byte offset of each physical line
    header_lines: int  # physical lines the header spans (normally 1)
    record_first_line: np.ndarray  # 1-based line number where each record starts
    record_last_line: np.ndarray  # 1-based line number where each record ends
    # 1-based line numbers of records whose quote is never closed (also records above).
    unclosed_lines: np.ndarray
    blank: np.ndarray  # per physical line: empty, not part of any record
    has_lone_cr: bool  # a carriage return that is not part of a CRLF line end
    mixed_line_ends: bool  # some lines end in CRLF, others in LF

    def records_at(self, offsets: np.ndarray, skipped_lines: np.ndarray) -> np.ndarray:
        """The record each byte offset reports on, or -1 where an offset is not a record's.

        A parser may report a record from the start of blank lines before it; those, and
        the `skipped_lines` (1-based) it was never given, may lie between.
        """
        if not len(offsets):
            return np.zeros(0, np.int64)
        line = np.searchsorted(self.line_starts, offsets, side="right") - 1
        at_line_start = (line >= 0) & (self.line_starts[np.maximum(line, 0)] == offsets)
        record = np.searchsorted(self.record_first_line - 1, line, side="left")
        inside = record < self.records
        record_line = np.append(self.record_first_line - 1, len(self.line_starts))[record]
        skippable = self.blank.copy()
        skippable[skipped_lines - 1] = True
        skippable_before = np.concatenate([[0], np.cumsum(skippable)])
        gap_skippable = skippable_before[record_line] - skippable_before[np.maximum(line, 0)]
        fits = at_line_start & inside & (gap_skippable == record_line - line)
        return np.where(fits, record, -1)

    def line_start_near(self, offsets: np.ndarray) -> np.ndarray:
        """Each offset, or the start of its line where it lies one byte past it.

        DuckDB's reader (2.0) reports where a record of a file with LF line ends starts
        one byte late (as if its line ends were CRLF); with CRLF line ends it is exact. A
        line holds at least one byte before its break, so one byte past a line's start is
        never another line's start: the offset is that line's."""
        if not len(offsets) or not len(self.line_starts):
            return offsets
        line = np.searchsorted(self.line_starts, offsets, side="right") - 1
        start = self.line_starts[np.maximum(line, 0)]
        return np.where((line >= 0) & (offsets - start == 1), start, offsets)

    def records_spanning(self, offsets: np.ndarray) -> np.ndarray:
        """The index of the record each byte offset lies in (offsets in no record dropped)."""
        if not len(offsets) or not self.records:
            return np.zeros(0, np.int64)
        # Each offset's line (1-based), then the record whose first line is the last at or
        # before it: only the offsets are looked up, no array of every record is made.
        line = np.searchsorted(self.line_starts, offsets, side="right")
        record = np.searchsorted(self.record_first_line, line, side="right") - 1
        last = self.record_last_line[np.maximum(record, 0)]
        inside = (record >= 0) & (line <= last) & (offsets < self.size)
        return np.unique(record[inside])

    @property
    def records(self) -> int:
        return len(self.record_first_line)

    # The longest record, worked out once per layout (a file of millions of records asks
    # for it more than once).
    @cached_property
    def _longest_record(self) -> int:
        """The longest record's bytes: a record on one line is that line (the longest line
        that is neither header nor blank), and the few records over several lines are
        measured one by one (each of their lines is shorter than the record)."""
        if not self.records:
            return 0
        longest = 0
        starts, lines = self.line_starts, len(self.line_starts)
        # A million lines at a time into one buffer: no array of the file's size is made.
        buffer = np.empty(min(_LINES_AT_ONCE, lines), np.int64)
        for first in range(self.header_lines, lines, _LINES_AT_ONCE):
            last = min(first + _LINES_AT_ONCE, lines)
            length = buffer[: last - first]
            inner = min(last, lines - 1)  # lines whose end is the next line's start
            np.subtract(starts[first + 1 : inner + 1], starts[first:inner],
                        out=length[: inner - first])  # fmt: skip
            if inner < last:
                length[-1] = self.size - starts[lines - 1]
            length[self.blank[first:last].astype(bool)] = 0
            longest = max(longest, int(length.max()))
        several = np.flatnonzero(self.record_last_line != self.record_first_line)
        if len(several):
            starts, ends = self.record_spans(several)
            longest = max(longest, int((ends - starts).max()))
        return longest

    def record_spans(self, records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The byte span of each of `records` (indexes): where it starts, and just past its
        last line's break; only those records are looked up."""
        starts = self.line_starts[self.record_first_line[records] - 1]
        after = self.record_last_line[records]  # 0-based, the line after the record's last
        lines = len(self.line_starts)
        ends = np.where(after < lines, self.line_starts[np.minimum(after, lines - 1)], self.size)
        return starts, ends.astype(self.line_starts.dtype, copy=False)

    def max_record_bytes(self) -> int:
        return self._longest_record


@dataclass
class _Scan:
    line_starts: np.ndarray
    odd_quotes: np.ndarray  # the line holds an odd number of quote characters
    stray_quotes: np.ndarray  # a quote where RFC 4180 puts none
    blank: np.ndarray  # the line is empty (or only a carriage return)
    has_lone_cr: bool
    mixed_line_ends: bool


def _scan(path: Path) -> _Scan:
    size = path.stat().st_size
    starts: list[np.ndarray] = [np.zeros(1, np.int64)]
    odd: list[np.ndarray] = []
    stray: list[np.ndarray] = []  # line indexes holding a quote outside RFC 4180's places
    # Per line break: the byte before it when that is a CR, otherwise any other byte.
    before_break: list[np.ndarray] = []
    carry_quotes = 0  # quotes of the line that runs across the chunk boundary
    previous_last = -1  # last byte of the previous chunk
    crs = crlfs = lfs = lines_before = 0
    raw = bytearray(_CHUNK)
    buffer = np.frombuffer(raw, np.uint8)
    # One mask, reused: a fresh array of a chunk's size per comparison would be new pages
    # from the system each time (most of the scan's time).
    mask = np.empty(_CHUNK, bool)

    def where(chunk: np.ndarray, byte: int) -> np.ndarray:
        if raw.find(byte, 0, len(chunk)) < 0:  # memchr: most chunks hold no quote or CR
            return np.zeros(0, np.int64)
        found = np.equal(chunk, byte, out=mask[: len(chunk)])
        return np.flatnonzero(found)

    offset = 0
    with path.open("rb", buffering=0) as fh:
        while read := fh.readinto(raw):
            chunk = buffer[:read]
            newlines = where(chunk, _NEWLINE)
            quotes = where(chunk, _QUOTE)
            cr = where(chunk, _CR)
            crs += len(cr)
            lfs += len(newlines)
            # CR immediately before LF, across the chunk boundary too.
            crlfs += int(np.count_nonzero(chunk[cr[cr + 1 < read] + 1] == _NEWLINE))
            if read and chunk[0] == _NEWLINE and previous_last == _CR:
                crlfs += 1
            if not len(quotes):
                # No quote in the chunk (most chunks): only the line that runs on from the
                # previous chunk can hold an odd number.
                line_odd = np.zeros(len(newlines), bool)
                if len(newlines):
                    line_odd[0] = carry_quotes % 2 == 1
                    carry_quotes = 0
                odd.append(line_odd)
            else:
                quotes_before = np.searchsorted(quotes, newlines)
                per_line = np.diff(quotes_before, prepend=0)
                if len(per_line):
                    per_line[0] += carry_quotes
                    carry_quotes = len(quotes) - int(quotes_before[-1])
                else:
                    carry_quotes += len(quotes)
                odd.append((per_line % 2).astype(bool))
            # Taken in turn within its line, a quote opens a value (then a delimiter, the
            # line start or a doubled quote is before it) or closes one (then a delimiter,
            # the line end or a doubled quote is after it). A line where one is elsewhere
            # holds a quote inside an unquoted value.
            line_of = np.searchsorted(newlines, quotes)
            first_of_line = np.searchsorted(line_of, line_of, side="left")
            opening = (np.arange(len(quotes)) - first_of_line) % 2 == 0
            before = np.where(quotes > 0, chunk[np.maximum(quotes - 1, 0)], previous_last)
            end = -1 if offset + read == size else -2  # -2: the next byte is in the next chunk
            after = np.where(quotes + 1 < read, chunk[np.minimum(quotes + 1, read - 1)], end)
            fits = np.where(
                opening,
                np.isin(before, (_COMMA, _NEWLINE, _QUOTE, -1)),
                np.isin(after, (_COMMA, _NEWLINE, _CR, _QUOTE, -1)),
            )
            misplaced = np.unique(line_of[~fits])
            # The line that runs on from the previous chunk (or into the next) is checked
            # whole, since its quotes are counted in two parts.
            edges = [0, len(newlines)] if len(quotes) else []
            stray.append(np.concatenate([misplaced, edges]).astype(np.int64) + lines_before)
            lines_before += len(newlines)
            # The byte before each line break serves only to tell a CR from any other byte:
            # in a chunk without CR, every such byte is another (0 stands for them), but
            # for the first line break's, which may be the previous chunk's last byte.
            if len(cr):
                previous = np.where(newlines > 0, chunk[np.maximum(newlines - 1, 0)],
                                    previous_last).astype(np.int16)  # fmt: skip
            else:
                previous = np.zeros(len(newlines), np.int16)
                if len(newlines) and newlines[0] == 0:
                    previous[0] = previous_last
            before_break.append(previous)
            starts.append(np.add(newlines, offset + 1, dtype=np.int64))
            previous_last = int(chunk[-1])
            offset += read
    line_starts = np.concatenate(starts)
    breaks = np.concatenate(before_break) if before_break else np.zeros(0, np.int16)
    odd_quotes = np.concatenate(odd) if odd else np.zeros(0, bool)
    if line_starts[-1] < size:
        # The last line has no line break of its own.
        odd_quotes = np.append(odd_quotes, carry_quotes % 2 == 1)
        breaks = np.append(breaks, np.int16(-1))
    else:
        line_starts = line_starts[:-1]  # a final line break ends the last line
    lengths = np.append(line_starts[1:], size) - line_starts
    has_break = breaks >= 0
    # A line's length includes its line break; a blank line is only the break (maybe CRLF).
    content = lengths - has_break
    blank = (content == 0) | ((content == 1) & (breaks == _CR) & has_break)
    stray_quotes = np.zeros(len(line_starts), bool)
    if stray:
        marked = np.concatenate(stray)
        stray_quotes[marked[marked < len(line_starts)]] = True
    if size == 0:
        line_starts, odd_quotes, blank = np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, bool)
        stray_quotes = np.zeros(0, bool)
    return _Scan(
        line_starts=line_starts,
        odd_quotes=odd_quotes,
        stray_quotes=stray_quotes,
        blank=blank,
        has_lone_cr=crs > crlfs,
        mixed_line_ends=0 < crlfs < lfs,
    )


class _LineReader:
    """Decoded physical lines of a file, read on demand for the csv parser."""

    def __init__(self, fh: BinaryIO, line_starts: np.ndarray, size: int) -> None:
        self.fh, self.line_starts, self.size = fh, line_starts, size

    def lines(self, first: int, consumed: list[int]) -> Iterator[str]:
        """Lines from `first` on; ends early once a record would exceed MAX_RECORD_BYTES."""
        taken = 0
        for index in range(first, len(self.line_starts)):
            start = int(self.line_starts[index])
            nxt = index + 1
            end = int(self.line_starts[nxt]) if nxt < len(self.line_starts) else self.size
            taken += end - start
            if taken > MAX_RECORD_BYTES:
                return
            self.fh.seek(start)
            consumed.append(index)
            # Only quotes, commas and line breaks matter here, and they are ASCII.
            yield self.fh.read(end - start).decode("utf-8", errors="replace")


def read_record(reader: _LineReader, first: int) -> tuple[int, int] | None:
    """Parse one record starting at line index `first`.

    Returns (index of its last line, number of fields), or None when the parser cannot close
    the record.
    """
    consumed: list[int] = []
    parser = csv.reader(reader.lines(first, consumed), strict=True)
    try:
        fields = next(parser)
    except (csv.Error, StopIteration):
        return None
    return consumed[-1], len(fields)


def _configure_csv() -> None:
    # The default field limit (128 KiB) is far below what an export may hold in one value.
    csv.field_size_limit(MAX_RECORD_BYTES)


def scan_layout(path: Path, field_count: int | None = None) -> CsvLayout:
    """Find every record of `path`; `field_count` is the header's number of fields (worked
    out from the header record when not given)."""
    _configure_csv()
    scan = _scan(path)
    size = path.stat().st_size
    lines = len(scan.line_starts)
    continuation = np.zeros(lines, bool)
    unclosed: list[int] = []
    # Lines whose record may not end with them: read these with the csv parser.
    checked = np.flatnonzero(scan.odd_quotes | scan.stray_quotes)
    header_last = 0
    with path.open("rb") as fh:
        reader = _LineReader(fh, scan.line_starts, size)
        k = 0
        # The header is the first record; it decides the field count.
        if lines and len(checked) and checked[0] == 0:
            header = read_record(reader, 0)
            if header is not None:
                header_last, header_fields = header
                field_count = field_count or header_fields
                continuation[1 : header_last + 1] = True
            k = int(np.searchsorted(checked, header_last, side="right"))
        while k < len(checked):
            first = int(checked[k])
            found = read_record(reader, first)
            if found is None:
                unclosed.append(first)
                k += 1
                continue
            last, fields = found
            if last == first:
                k += 1  # the record ends on its own line after all
                continue
            if field_count is not None and fields != field_count:
                unclosed.append(first)
                k += 1
                continue
            continuation[first + 1 : last + 1] = True
            k = int(np.searchsorted(checked, last, side="right"))

    index = np.arange(lines)
    is_record = ~continuation & ~scan.blank & (index > header_last)
    first_lines = np.flatnonzero(is_record)
    # A record runs until the next line that is not a continuation (a record or blank line).
    if continuation.any():
        boundaries = np.flatnonzero(~continuation)
        position = np.searchsorted(boundaries, first_lines, side="right")
        next_boundary = np.append(boundaries, lines)[position]
    else:
        next_boundary = first_lines + 1  # every record is one line
    return CsvLayout(
        size=size,
        line_starts=scan.line_starts,
        header_lines=header_last + 1 if lines else 0,
        record_first_line=first_lines.astype(np.int64) + 1,
        record_last_line=next_boundary.astype(np.int64),
        unclosed_lines=np.array(unclosed, dtype=np.int64) + 1,
        blank=scan.blank,
        has_lone_cr=scan.has_lone_cr,
        mixed_line_ends=scan.mixed_line_ends,
    )


def record_text(fh: BinaryIO, start: int, end: int) -> str:
    """A record's full original text, without its final line break. Bytes that are not
    UTF-8 are kept as backslash escapes (\\xff), so nothing of the record is lost."""
    fh.seek(start)
    raw = fh.read(end - start)
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith((b"\n", b"\r")):
        raw = raw[:-1]
    return raw.decode("utf-8", errors="backslashreplace")


def blank_out_lines(source: Path, target: Path, layout: CsvLayout, lines: np.ndarray) -> OffsetMap:
    """Copy `source` with the given lines emptied (each keeps only its line break).

    The parser then skips them as blank lines. Returns how to turn a byte offset in the copy
    back into one in the original, so the parser's reports still point into the original.
    """
    starts = layout.line_starts[lines - 1]
    ends = np.append(layout.line_starts, layout.size)[lines]
    removed: list[int] = []
    with source.open("rb") as fin, target.open("wb") as fout:
        position = 0
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            while position < start:
                block = fin.read(min(_CHUNK, start - position))
                fout.write(block)
                position += len(block)
            line = fin.read(end - start)
            ending = b"\r\n" if line.endswith(b"\r\n") else line[len(line.rstrip(b"\r\n")) :]
            fout.write(ending)
            removed.append(len(line) - len(ending))
            position = end
        while block := fin.read(_CHUNK):
            fout.write(block)
    total = np.cumsum(np.array(removed, dtype=np.int64))
    return OffsetMap(starts - np.concatenate([[0], total[:-1]]), total)


@dataclass(frozen=True)
class OffsetMap:
    """Byte offsets in a copy with some lines emptied → offsets in the original."""

    copy_starts: np.ndarray  # where each emptied line starts in the copy
    removed_through: np.ndarray  # bytes removed up to and including each emptied line

    def original(self, offsets: np.ndarray) -> np.ndarray:
        before = np.searchsorted(self.copy_starts, offsets, side="left")
        shift = np.concatenate([[0], self.removed_through])[before]
        return offsets + shift
