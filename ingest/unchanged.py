"""Knowing that an entity's source is the one already loaded, without reading it again.

A rerun of a day on the same extract (after fixing another file, or a step further on)
need not load an entity whose file did not change: its tables already hold exactly what
loading it would give. Each loaded entity's source is recorded in `raw.__ingested`, in the
transaction that swaps the entity in: the name, size and modification time (to the
nanosecond) of each of its files, and the conditions of the load (the format, the as-of
day, whether an incomplete pull was accepted, and this version of the loader's own code).

A source is unchanged when the conditions are the same and every file has the same name,
size and modification time: nothing was written to it, and nothing is read to know it. A
file written again, even with the same bytes, is a change, and the entity is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb

from ingest.csv_reader import ExtractFileError
from ingest.entities import Entity
from ingest.sources import entity_source

TABLE = "raw.__ingested"
_PACKAGE = Path(__file__).resolve().parent


def loader_version() -> str:
    """A digest of the loader's code: a change to how rows are read, typed or checked
    means every entity is loaded again."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(_PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def conditions(fmt: str, as_of: date | None, accept_incomplete: bool) -> str:
    return json.dumps(
        {"format": fmt, "as_of": as_of.isoformat() if as_of else None,
         "accept_incomplete": accept_incomplete, "loader": loader_version()},
        sort_keys=True,
    )  # fmt: skip


def _files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.is_file())


def _stats(source: Path) -> str:
    listed = []
    for path in _files(source):
        stat = path.stat()
        listed.append([str(path.relative_to(source)) if source.is_dir() else path.name,
                       stat.st_size, stat.st_mtime_ns])  # fmt: skip
    return json.dumps(listed)


@dataclass(frozen=True)
class Source:
    """What is recorded of an entity's source when it is loaded."""

    path: str
    stats: str  # [[name, size, mtime_ns], ...] as JSON
    conditions: str


@dataclass(frozen=True)
class Recorded:
    source: Source
    rows_in: int
    loaded: int
    rejected: int


def ensure_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists raw")
    con.execute(
        f"create table if not exists {TABLE} (entity varchar primary key, path varchar, "
        "stats varchar, conditions varchar, rows_in bigint, loaded bigint, rejected bigint)"
    )


def recorded(con: duckdb.DuckDBPyConnection, entity: str) -> Recorded | None:
    ensure_table(con)
    rows = con.execute(
        f"select path, stats, conditions, rows_in, loaded, rejected from {TABLE} "
        "where entity = ?",
        [entity],
    ).fetchall()
    if not rows:
        return None
    path, stats, conds, rows_in, loaded, rejected = rows[0]
    return Recorded(Source(path, stats, conds), rows_in, loaded, rejected)


def source_now(source: Path, conds: str) -> Source:
    return Source(str(source), _stats(source), conds)


def compare(
    con: duckdb.DuckDBPyConnection, entity: str, source: Path, conds: str
) -> tuple[Source, Recorded | None]:
    """What to record of `source` now, and the entity's last load if its source is the
    one that load recorded, under the same conditions (else None)."""
    now = source_now(source, conds)
    last = recorded(con, entity)
    return now, (last if last is not None and last.source == now else None)


def rows_if_unchanged(
    con: duckdb.DuckDBPyConnection, extract_dir: Path, ent: Entity, fmt: str, conds: str
) -> int | None:
    """The rows counted when the entity's source was loaded, if it is unchanged since."""
    try:
        found = entity_source(extract_dir, ent, fmt)
    except ExtractFileError:
        return None
    if found.path is None:
        return None
    _, last = compare(con, ent.name, found.path, conds)
    return None if last is None else last.rows_in


def record(
    con: duckdb.DuckDBPyConnection, entity: str, source: Source | None, rows_in: int,
    loaded: int, rejected: int,
) -> None:  # fmt: skip
    """Record what an entity was loaded from (None: it had no source; nothing to skip)."""
    ensure_table(con)
    con.execute(f"delete from {TABLE} where entity = ?", [entity])
    if source is None:
        return
    con.execute(
        f"insert into {TABLE} values (?, ?, ?, ?, ?, ?, ?)",
        [entity, source.path, source.stats, source.conditions, rows_in, loaded, rejected],
    )
