"""A bad night does not wipe the clinic's work: a shrunken extract is refused.

A practice-management export that fails often still writes its files, with a header and
few or no rows. Loaded as it is, it would empty every segment and mark every work-list
member as gone. So before anything is replaced, each entity's rows are compared with the
last load that was accepted (kept in `ingest.loads` in the warehouse):

- a required entity (patients, appointments) with no rows is refused;
- an entity with more than `max_drop` (default 50%) fewer rows than its last accepted
  load is refused.

A refusal names each entity, both counts and the way to accept the drop on purpose
(`audiences run --accept-shrink ENTITY`, or the run tag `clinic-audiences/accept_shrink`).
Both comparisons are made inside the transaction that would swap the extract in, on the
records an independent count finds in each file (counted beside the loader) and on the
rows actually loaded. Before anything is read, only a required entity whose file holds no
record is refused (that much is seen without reading a whole file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb

from ingest import unchanged
from ingest.csv_reader import ExtractFileError
from ingest.entities import ENTITIES, ENTITIES_BY_NAME, Entity
from ingest.inputs import estimate_lines
from ingest.load import BeforeSwap, LoadCounts
from ingest.sources import count_source_rows

ACCEPT_ALL = "all"
DEFAULT_MAX_DROP = 0.5
HISTORY_DDL = (
    "create schema if not exists ingest",
    "create table if not exists ingest.loads ("
    " entity varchar not null, as_of date, source varchar not null, rows_in bigint not null,"
    " loaded bigint not null, rejected bigint not null, accepted_shrink boolean not null,"
    " loaded_at timestamptz not null)",
)


class ExtractRefused(ExtractFileError):
    """The extract looks like a failed export; nothing was replaced."""


@dataclass(frozen=True)
class ShrinkRule:
    """How far an entity may shrink against its last accepted load, and what is accepted
    anyway for this run (entity names, or 'all')."""

    max_drop: float = DEFAULT_MAX_DROP
    accepted: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise ValueError(
                f"the allowed drop {self.max_drop!r} must be a fraction from 0 to below 1 "
                "(0.5 refuses an extract with more than half the rows gone)"
            )
        known = {e.name for e in ENTITIES} | {ACCEPT_ALL}
        unknown = sorted(self.accepted - known)
        if unknown:
            raise ValueError(
                f"--accept-shrink names unknown entities {', '.join(unknown)}; "
                f"use entity names ({', '.join(e.name for e in ENTITIES)}) or 'all'"
            )

    @classmethod
    def parse(cls, accepted: str | None, max_drop: float = DEFAULT_MAX_DROP) -> ShrinkRule:
        names = frozenset(p.strip() for p in (accepted or "").split(",") if p.strip())
        return cls(max_drop=max_drop, accepted=names)

    def accepts(self, entity: str) -> bool:
        return ACCEPT_ALL in self.accepted or entity in self.accepted


@dataclass(frozen=True)
class LastLoad:
    rows_in: int
    loaded: int
    as_of: date | None
    source: str


def ensure_history(con: duckdb.DuckDBPyConnection) -> None:
    for ddl in HISTORY_DDL:
        con.execute(ddl)


def last_loads(con: duckdb.DuckDBPyConnection) -> dict[str, LastLoad]:
    """Each entity's most recent accepted load."""
    exists = con.execute(
        "select count(*) from information_schema.tables "
        "where table_schema = 'ingest' and table_name = 'loads'"
    ).fetchall()[0][0]
    if not exists:
        return {}
    rows = con.execute(
        "select entity, arg_max(rows_in, loaded_at), arg_max(loaded, loaded_at), "
        "arg_max(as_of, loaded_at), arg_max(source, loaded_at) from ingest.loads group by 1"
    ).fetchall()
    return {r[0]: LastLoad(r[1], r[2], r[3], r[4]) for r in rows}


def record_load(
    con: duckdb.DuckDBPyConnection,
    entity: str,
    as_of: date | None,
    source: str,
    rows_in: int,
    loaded: int,
    rejected: int,
    accepted_shrink: bool,
) -> None:
    ensure_history(con)
    con.execute(
        "insert into ingest.loads values (?, ?, ?, ?, ?, ?, ?, ?)",
        [entity, as_of, source, rows_in, loaded, rejected, accepted_shrink, datetime.now(UTC)],
    )


def shrink_problem(
    ent: Entity, rows: int, last: LastLoad | None, rule: ShrinkRule, what: str = "rows"
) -> str | None:
    """Why `rows` (of the new extract) looks like a failed export, or None."""
    if rule.accepts(ent.name):
        return None
    if ent.file_required and rows == 0:
        return f"{ent.name}: no {what}, and {ent.name} is required"
    if last is None:
        return None
    before = last.loaded if what == "rows loaded" else last.rows_in
    if before > 0 and rows < (1 - rule.max_drop) * before:
        when = f" of {last.as_of.isoformat()}" if last.as_of else ""
        return (
            f"{ent.name}: {rows:,} {what}, {1 - rows / before:.0%} fewer than the {before:,} "
            f"of the last accepted load{when} ({last.source})"
        )
    return None


def refusal(problems: dict[str, str], rule: ShrinkRule) -> ExtractRefused:
    """One message for every entity that shrank, with the way to accept it on purpose."""
    names = ",".join(problems)
    return ExtractRefused(
        f"the extract looks like a failed export (an empty required entity, or more than "
        f"{rule.max_drop:.0%} fewer rows than the last accepted load), so nothing was "
        "replaced: the previous day's warehouse, segments and work lists stay as they were.\n"
        + "".join(f"  {p}\n" for p in problems.values())
        + f"Re-export the extract; or, if the drop is real, run again with --accept-shrink "
        f"{names} (in the Dagster UI: the run tag clinic-audiences/accept_shrink={names})"
    )


def extract_rows(extract_dir: Path, ent: Entity, fmt: str) -> int:
    """About how many rows the extract holds for an entity, without reading its files
    whole (`ingest.inputs.estimate_lines`; exact for a small file and for Cliniko pages)."""
    return count_source_rows(extract_dir, ent, fmt, estimate_lines)


def check_extract(
    con: duckdb.DuckDBPyConnection, extract_dir: Path, fmt: str, rule: ShrinkRule,
    as_of: date | None = None, accept_incomplete: bool = False,
) -> dict[str, int]:
    """About how many rows each entity of the new extract holds (what progress goes by);
    raises ExtractRefused before anything is read when a required entity holds none. The
    shrink check itself is made on the independent count, in `guarded_swap`. An entity
    whose source is the one already loaded (`ingest.unchanged`) is not looked at again:
    its rows are that load's."""
    conds = unchanged.conditions(fmt, as_of, accept_incomplete)
    counts = {}
    for ent in ENTITIES:
        known = unchanged.rows_if_unchanged(con, Path(extract_dir), ent, fmt, conds)
        counts[ent.name] = known if known is not None else extract_rows(Path(extract_dir),
                                                                        ent, fmt)  # fmt: skip
    problems = {
        ent.name: p
        for ent in ENTITIES
        if counts[ent.name] == 0 and (p := shrink_problem(ent, 0, None, rule)) is not None
    }
    if problems:
        raise refusal(problems, rule)
    return counts


def guarded_swap(
    rows_in: dict[str, int], rule: ShrinkRule, as_of: date | None
) -> BeforeSwap:
    """The last word before an extract is swapped in, inside the swap's transaction: every
    entity's independent count (`rows_in`) must agree with what ingest read, neither an
    entity's records nor its loaded rows may have shrunk past the limit, and each load is
    recorded as the entity's last accepted one. Any problem refuses the whole extract."""

    def before_swap(con: duckdb.DuckDBPyConnection, staged: list[LoadCounts]) -> None:
        last = last_loads(con)
        faults, shrunk = [], {}
        for counts in staged:
            expected = rows_in.get(counts.entity)
            read = counts.loaded + counts.rejected
            if expected is not None and (counts.rows_in != expected or read != expected):
                faults.append(
                    f"{counts.entity}: ingest read {counts.rows_in:,} records "
                    f"({counts.loaded:,} loaded, {counts.rejected:,} rejected) but an "
                    f"independent count of {counts.source} finds {expected:,}"
                )
            ent = ENTITIES_BY_NAME[counts.entity]
            problem = shrink_problem(ent, counts.rows_in, last.get(ent.name), rule)
            if problem is None:
                problem = shrink_problem(
                    ent, counts.loaded, last.get(ent.name), rule, what="rows loaded"
                )
            if problem is not None:
                shrunk[ent.name] = problem
        if faults:
            raise ExtractRefused(
                "; ".join(faults) + "; nothing was replaced. This is a fault in ingest: keep "
                "the files and report it"
            )
        if shrunk:
            raise refusal(shrunk, rule)
        for counts in staged:
            record_load(
                con, counts.entity, as_of, counts.source, counts.rows_in, counts.loaded,
                counts.rejected, accepted_shrink=rule.accepts(counts.entity),
            )  # fmt: skip

    return before_swap
