"""The byte scan reads a file a chunk at a time: where the chunks fall must not matter.

Any text of quotes, commas, CRs and LFs (well-formed or not) is scanned with chunks of a
few bytes, so that every kind of byte lands on a chunk boundary, and with one chunk for
the whole file; every array and flag of the layout must be the same. (A file with a lone
CR, or mixing CRLF and LF, is read from a copy with LF line ends, scanned again: of its
first scan only those two flags are used, and only they are compared.)
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ingest.csv_layout as csv_layout

PIECES = [b"a", b"bc", b",", b'"', b'""', b"\n"]
LF_TEXT = st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join)
# Files of one kind of line end (LF, or CRLF throughout), and files of any bytes.
FILES = st.one_of(
    LF_TEXT.map(lambda body: b"id,name,note\n" + body),
    LF_TEXT.map(lambda body: (b"id,name,note\n" + body).replace(b"\n", b"\r\n")),
    st.lists(st.sampled_from([*PIECES, b"\r", b"\r\n"]), max_size=60).map(
        lambda pieces: b"id,name,note\n" + b"".join(pieces)
    ),
)

def layout_fields(layout: csv_layout.CsvLayout) -> dict:
    return {
        name: (value.tolist() if isinstance(value, np.ndarray) else value)
        for name, value in vars(layout).items()
    }


@settings(max_examples=400, deadline=None)
@given(content=FILES, chunk=st.integers(1, 9))
def test_the_layout_does_not_depend_on_where_the_chunks_fall(tmp_path_factory, content, chunk):
    path = tmp_path_factory.mktemp("scan") / "f.csv"
    path.write_bytes(content)
    whole = layout_fields(csv_layout.scan_layout(path, 3))
    original = csv_layout._CHUNK
    csv_layout._CHUNK = chunk
    try:
        chunked = layout_fields(csv_layout.scan_layout(path, 3))
    finally:
        csv_layout._CHUNK = original
    if whole["has_lone_cr"] or whole["mixed_line_ends"]:
        flags = ("has_lone_cr", "mixed_line_ends")
        assert {f: chunked[f] for f in flags} == {f: whole[f] for f in flags}
    else:
        assert chunked == whole


@settings(max_examples=400, deadline=None)
@given(content=FILES)
def test_each_records_span_and_the_longest_are_as_the_lines_say(tmp_path_factory, content):
    """A record runs from the start of its first line to the start of the line after its
    last (or the end of the file); the longest is the largest such span. Worked out here
    record by record from the line starts, against the layout's vectorised answers."""
    path = tmp_path_factory.mktemp("spans") / "f.csv"
    path.write_bytes(content)
    layout = csv_layout.scan_layout(path, 3)
    starts = [int(s) for s in layout.line_starts]
    expected = []
    for first, last in zip(layout.record_first_line.tolist(), layout.record_last_line.tolist(),
                           strict=True):  # fmt: skip
        end = starts[last] if last < len(starts) else layout.size
        expected.append((starts[first - 1], end))
    records = np.arange(layout.records)
    got_starts, got_ends = layout.record_spans(records)
    assert list(zip(got_starts.tolist(), got_ends.tolist(), strict=True)) == expected
    # Every byte of a record lies in it; a byte of the header or a blank line in none.
    inside = [(b, r) for r, (s, e) in enumerate(expected) for b in range(s, e)]
    offsets = np.arange(-1, layout.size + 2)
    owner = dict(inside)
    for offset in offsets.tolist():
        found = layout.records_spanning(np.array([offset])).tolist()
        assert found == ([owner[offset]] if offset in owner else []), offset
    assert layout.records_spanning(offsets).tolist() == sorted({r for _, r in inside})
    assert layout.max_record_bytes() == max((e - s for s, e in expected), default=0)
    # The longest is found a block of lines at a time: where the blocks fall must not matter.
    original = csv_layout._LINES_AT_ONCE
    csv_layout._LINES_AT_ONCE = 2
    try:
        assert csv_layout.scan_layout(path, 3).max_record_bytes() == layout.max_record_bytes()
    finally:
        csv_layout._LINES_AT_ONCE = original
    # A few records looked up alone give the same spans.
    some = records[::2]
    alone = layout.record_spans(some)
    assert list(zip(alone[0].tolist(), alone[1].tolist(), strict=True)) == expected[::2]


def test_a_record_over_two_lines_is_measured_whole(tmp_path):
    # Header 13 bytes; record 1 is `1,"long` + LF + `value here",x` + LF = 22 bytes over
    # lines 2 and 3, longer than either line; record 2 `2,b,c` + LF = 6 bytes.
    path = tmp_path / "f.csv"
    path.write_bytes(b'id,name,note\n1,"long\nvalue here",x\n2,b,c\n')
    layout = csv_layout.scan_layout(path, 3)
    assert layout.record_first_line.tolist() == [2, 4]
    assert layout.record_last_line.tolist() == [3, 4]
    starts, ends = layout.record_spans(np.arange(2))
    assert starts.tolist() == [13, 35] and ends.tolist() == [35, 41]
    assert layout.max_record_bytes() == 22
    # A byte of the header, of each line of record 1, of record 2, and past the end.
    bytes_at = (5, 13, 20, 34, 35, 40, 41)
    spanning = [layout.records_spanning(np.array([b])).tolist() for b in bytes_at]
    assert spanning == [[], [0], [0], [0], [1], [1], []]
