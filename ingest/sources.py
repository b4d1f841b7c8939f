"""Where an entity of an extract folder is read from: its CSV file or Cliniko page folder."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingest import cliniko
from ingest.csv_reader import ExtractFileError
from ingest.entities import ENTITIES, Entity

FORMATS = ("csv", "cliniko")


@dataclass(frozen=True)
class EntitySource:
    kind: str  # "csv" (a file) or "cliniko" (folders of pages)
    # The file, or the extract folder of the Cliniko folders; None: the entity is absent
    # from the extract (an empty entity).
    path: Path | None
    resource: str = ""  # the Cliniko resource the pages hold


def check_format(extract_dir: Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExtractFileError(f"unknown extract format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if not Path(extract_dir).is_dir():
        raise ExtractFileError(f"{extract_dir}: the extract folder does not exist")


def check_file_names(extract_dir: Path) -> None:
    """An entity file must be a file, named exactly as its entity. A file that is almost
    an entity's name (`Opt_Outs.csv`, `opt-outs.csv`) is an error, not an absent entity:
    an opt-out file that is not read would let opted-out patients be messaged."""
    names = sorted(e.file_name for e in ENTITIES)
    # Only an entity whose own file is absent can be misnamed.
    absent = [n for n in names if not os.path.lexists(extract_dir / n)]
    problems = []
    for child in sorted(extract_dir.iterdir()):
        if child.name in names:
            if not child.is_file():
                problems.append(
                    f"{child}: {child.name} is not a file (a folder, or a link to nothing); "
                    f"put the {child.stem} extract there as a CSV file"
                )
            continue
        if not child.name.lower().endswith(".csv"):
            continue
        near = child.name.lower().replace("-", "_").replace(" ", "_")
        close = [n for n in absent if n == near] or difflib.get_close_matches(
            near, absent, n=1, cutoff=0.85
        )
        if close:
            problems.append(
                f"{child}: extract files are named exactly as their entity; is this "
                f"{close[0]}? Rename it (a file under another name is not read)"
            )
    if problems:
        raise ExtractFileError("\n".join(problems))


def entity_source(extract_dir: Path, ent: Entity, fmt: str) -> EntitySource:
    """The file, or the extract folder holding the Cliniko page folders, an entity is read
    from; a missing required one is an error, a missing optional one an empty entity."""
    extract_dir = Path(extract_dir)
    endpoints = cliniko.ENDPOINTS.get(ent.name, ())
    if fmt == "cliniko" and endpoints:
        main = extract_dir / endpoints[0].folder
        # With the extractor's state beside them, absent folders are read too: the state
        # says whether an endpoint was pulled empty or never pulled at all.
        pulled_by_extractor = (extract_dir / cliniko.STATE_FILE_NAME).exists()
        if pulled_by_extractor or any((extract_dir / e.folder).is_dir() for e in endpoints):
            return EntitySource("cliniko", extract_dir, endpoints[0].resource)
        if ent.name in cliniko.REQUIRED_FOLDERS:
            raise ExtractFileError(
                f"{main}: the '{main.name}' folder is missing from the Cliniko extract; "
                "run `audiences extract cliniko` again or check --extracts"
            )
        return EntitySource("cliniko", None, endpoints[0].resource)
    path = extract_dir / ent.file_name
    if path.is_file():
        return EntitySource("csv", path)
    if ent.file_required and fmt == "csv":
        raise ExtractFileError(
            f"{path}: {ent.file_name} is missing; a canonical extract needs at least "
            "patients.csv and appointments.csv"
        )
    return EntitySource("csv", None)


def count_source_rows(
    extract_dir: Path, ent: Entity, fmt: str, count_csv: Callable[[Path], int]
) -> int:
    """Rows an entity's source holds: Cliniko records, or what `count_csv` finds in the file
    (0 for an absent optional entity)."""
    found = entity_source(extract_dir, ent, fmt)
    if found.path is None:
        return 0
    if found.kind == "cliniko":
        return cliniko.count_entity_records(found.path, ent)
    return count_csv(found.path)
