"""The estimate progress goes by before a file is read: exact for a small file, and for a
long one the file's length over the mean length of its first lines, without reading it
whole."""

from __future__ import annotations

import ingest.inputs as inputs


def test_a_small_file_is_counted_exactly(tmp_path):
    path = tmp_path / "patients.csv"
    # Four records after the header; one blank line and no line break at the end.
    path.write_bytes(b"patient_id,first_name\np1,A\np2,B\n\np3,C\np4,D")
    assert inputs.estimate_lines(path) == 4


def test_a_long_file_is_estimated_from_its_first_lines_without_reading_it_whole(
    tmp_path, monkeypatch
):
    path = tmp_path / "appointments.csv"
    header = b"appointment_id,patient_id\n"
    # 10,000 lines of 16 bytes each: "a0000001,p000001" plus its line break is 17 bytes.
    lines = b"".join(b"a%07d,p%06d\n" % (i, i % 999_999) for i in range(10_000))
    path.write_bytes(header + lines)
    monkeypatch.setattr(inputs, "ESTIMATE_SAMPLE", 17 * 100 + len(header))
    read_whole = []
    monkeypatch.setattr(inputs, "count_lines", lambda p: read_whole.append(p) or 0)
    # The sample holds exactly 100 lines of 17 bytes: the rest of the file is 10,000 of
    # them.
    assert inputs.estimate_lines(path) == 10_000
    assert read_whole == []


def test_a_file_of_one_long_line_is_estimated_as_one_record(tmp_path, monkeypatch):
    path = tmp_path / "notes.csv"
    path.write_bytes(b"id,note\n1," + b"x" * 5000)
    monkeypatch.setattr(inputs, "ESTIMATE_SAMPLE", 1000)
    assert inputs.estimate_lines(path) == 1
