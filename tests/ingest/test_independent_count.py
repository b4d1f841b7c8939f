"""The independent count's shortcut for files without quotes counts what the csv module
counts.

A file with no quote character, no blank line and no lone CR holds one record per line
after the header; the shortcut counts its line breaks. Any file the shortcut takes must be
counted the same by the record-by-record count (Python's csv module), wherever the chunks
of its reading fall; every other file is left to that count (the shortcut says None).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ingest.inputs as inputs

PLAIN = [b"a", b"b c", b",", b"\n", b"\xc3\xa9", b"\x00"]
LF_FILES = st.lists(st.sampled_from(PLAIN), max_size=40).map(lambda p: b"id,name\n" + b"".join(p))
# Files the shortcut mostly takes (LF, or CRLF throughout), and files of any bytes.
FILES = st.one_of(
    LF_FILES,
    LF_FILES.map(lambda content: content.replace(b"\n", b"\r\n")),
    st.lists(st.sampled_from([*PLAIN, b"\r\n", b"\r", b'"']), max_size=40).map(
        lambda p: b"id,name\n" + b"".join(p)
    ),
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", 0),  # no header
        (b"id", 0),  # a header alone
        (b"id\n1\n2\n", 2),
        (b"id\n1\n2", 2),  # the last line has no line break
        (b"id\r\n1,x\r\n2,y\r\n", 2),
        (b"\xef\xbb\xbfid\r\n1\r\n", 1),  # a BOM is part of the header's line
        (b"id\n\n1\n", None),  # a blank line is no record: left to the csv count
        (b"id\r\n\r\n1\r\n", None),
        (b"\nid\n1\n", None),  # a blank first line
        (b"id\n1\n\n", None),  # a blank last line
        (b"id\n1\r2\n", None),  # a lone CR ends a line for the csv module
        (b"id\n1\r", None),
        (b'id\n"a"\n', None),  # a quote may hold a line break
    ],
)
def test_the_shortcut_counts_lines_after_the_header(tmp_path, content, expected):
    path = tmp_path / "f.csv"
    path.write_bytes(content)
    assert inputs._count_lines_without_quotes(path) == expected


@settings(max_examples=400, deadline=None)
@given(content=FILES, chunk=st.integers(1, 7))
def test_any_file_the_shortcut_takes_is_counted_as_the_csv_module_counts(
    tmp_path_factory, content, chunk
):
    path = tmp_path_factory.mktemp("count") / "f.csv"
    path.write_bytes(content)
    record_by_record = sum(1 for _ in inputs.csv_record_lines(path))
    original = inputs._CHUNK
    inputs._CHUNK = chunk
    try:
        shortcut = inputs._count_lines_without_quotes(path)
    finally:
        inputs._CHUNK = original
    assert shortcut == inputs._count_lines_without_quotes(path)
    if shortcut is not None:
        assert shortcut == record_by_record
    assert inputs.count_csv_records(path) == record_by_record
