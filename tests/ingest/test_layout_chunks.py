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
