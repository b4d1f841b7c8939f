"""The DuckDB warehouse file: opening it, and small helpers every reader shares.

DuckDB allows one writer per file. Writers hold a connection only as long as they need
it; readers open it read-only, so they never block the pipeline's writer for longer than
their query.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb

# A writer waits this long for readers to leave (theirs are short-lived connections, e.g.
# the web app's) before it gives up.
WRITER_WAIT_SECONDS = 20.0


@contextmanager
def connect(
    path: str | Path, read_only: bool = False, memory_limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse file (creating its folder when writing), always closing it
    afterwards. `memory_limit` (e.g. `4GB`) caps DuckDB's memory; by default it takes up
    to 80% of the machine's. A writer finding the file open elsewhere retries for up to
    WRITER_WAIT_SECONDS (a reader's connection lasts milliseconds); a reader does not."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + (0 if read_only else WRITER_WAIT_SECONDS)
    pause = 0.02
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            if time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            from core.run_lock import WarehouseBusy, holder

            if read_only:
                raise WarehouseBusy(
                    f"the warehouse {path} is open for writing by {holder(path)}; DuckDB lets "
                    "no other process in meanwhile. Try again when that run has finished"
                ) from None
            raise WarehouseBusy(
                f"the warehouse {path} is open in another process ({holder(path)}, or a "
                f"reader that held it over {WRITER_WAIT_SECONDS:.0f} s); DuckDB lets no "
                "other process in meanwhile. Try again when it has finished"
            ) from None
    try:
        con.execute("SET TimeZone = 'UTC'")
        if memory_limit:
            con.execute("SET memory_limit = ?", [memory_limit])
        yield con
    finally:
        con.close()


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """The single value a query returns (DuckDB 2 relations have no fetchone())."""
    rows = con.execute(sql, params or []).fetchall()  # fetch all: DuckDB 2 needs it finished
    return rows[0][0] if rows else None


def table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    return bool(
        scalar(
            con,
            "select count(*) from information_schema.tables "
            "where table_schema = ? and table_name = ?",
            [schema, name],
        )
    )


@dataclass(frozen=True)
class Warehouse:
    """The warehouse file and how to open it: every reader and writer goes through this."""

    path: Path
    memory_limit: str | None = None

    @classmethod
    def at(cls, path: str | Path | Warehouse, memory_limit: str | None = None) -> Warehouse:
        return path if isinstance(path, Warehouse) else cls(Path(path), memory_limit)

    def connect(self, read_only: bool = False):
        return connect(self.path, read_only=read_only, memory_limit=self.memory_limit)

    def exists(self) -> bool:
        return self.path.exists()


class WrongDay(LookupError):
    """What was asked for is built for another as-of day; the message says which day is
    built and how to build the one asked for."""


def built_day(con: duckdb.DuckDBPyConnection) -> date | None:
    """The as-of day the marts were built for (`marts.warehouse_as_of`), or None when the
    warehouse has no marts built by dbt."""
    return built_for(con)[0]


def built_for(con: duckdb.DuckDBPyConnection) -> tuple[date | None, str | None]:
    """The as-of day and the clinic time zone the marts were built for, or (None, None)."""
    if not table_exists(con, "marts", "warehouse_as_of"):
        return None, None
    rows = con.execute(
        "select as_of, clinic_timezone from marts.warehouse_as_of order by as_of desc limit 1"
    ).fetchall()
    if not rows or not isinstance(rows[0][0], date):
        return None, None
    return rows[0][0], rows[0][1]


def require_built_for(
    built: date | None, as_of: date, what: str,
    timezone: str | None = None, built_timezone: str | None = None,
) -> None:  # fmt: skip
    """Refuse to compute `what` for `as_of` (in `timezone`) from marts built for another
    day, or in another time zone (their days and ages are counted in that zone)."""
    if timezone and built_timezone and timezone != built_timezone:
        raise WrongDay(
            f"{what} in {timezone} needs marts built in that time zone, but the warehouse "
            f"was built in {built_timezone}. Rebuild it with CLINIC_TIMEZONE={timezone} "
            f"(`audiences run --as-of {as_of}`), or set CLINIC_TIMEZONE={built_timezone}"
        )
    if built is not None and built != as_of:
        raise WrongDay(
            f"{what} for {as_of} needs the marts of {as_of}, but the warehouse is built for "
            f"{built}. Build that day first with `audiences run --as-of {as_of}` (once it "
            f"has begun), or ask about {built}"
        )
