"""Counting the rows an extract holds, independently of the loader.

The asset check compares this count with what landed in `raw.<entity>` plus
`raw.<entity>__rejected`, so a row dropped anywhere in parsing shows up as a failure.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ingest import cliniko
from ingest.entities import Entity


def count_csv_records(path: Path) -> int:
    """Records in a CSV file after the header, by Python's own CSV parser (blank lines
    are not records). Slower than the loader's reader, and independent of it."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        rows = sum(1 for row in csv.reader(fh) if row)
    return max(rows - 1, 0)


def count_input_rows(extract_dir: Path, ent: Entity, fmt: str) -> int:
    extract_dir = Path(extract_dir)
    resources = cliniko.mappings({})
    if fmt == "cliniko" and ent.name in resources:
        folder = extract_dir / resources[ent.name][0]
        if not folder.is_dir():
            return 0
        return sum(
            len(cliniko.read_page(p, resources[ent.name][0])) for p in cliniko.page_files(folder)
        )
    path = extract_dir / ent.file_name
    return count_csv_records(path) if path.is_file() else 0
