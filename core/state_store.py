"""Engine creation and a small versioned migration runner for the state store."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


@dataclass(frozen=True)
class Migration:
    """One schema step of a component. Versions start at 1 and never change once shipped."""

    version: int
    description: str
    apply: Callable[[Connection], None]


_REGISTRY: dict[str, list[Migration]] = {}

schema_migrations_meta = sa.MetaData()
schema_migrations = sa.Table(
    "schema_migrations",
    schema_migrations_meta,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def register_migrations(component: str, migrations: list[Migration]) -> None:
    """Declare a component's migrations (called at import time of the component's module)."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"{component}: migration versions must be 1..n in order, got {versions}")
    _REGISTRY[component] = list(migrations)


def connect_state(url: str) -> Engine:
    """An engine for `STATE_DB_URL`; creates the SQLite file's folder when needed."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: an error's message (and so the log) never holds the values
        # written, which can be a note about a patient or an address.
        engine = sa.create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - driver hook
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)


def migrate(engine: Engine, components: list[str] | None = None) -> list[tuple[str, int]]:
    """Apply pending migrations of the registered components; returns what was applied.

    Each migration runs in its own transaction together with its bookkeeping row, so a
    failure leaves the database at the last complete version.
    """
    schema_migrations_meta.create_all(engine)
    applied: list[tuple[str, int]] = []
    for component in components or sorted(_REGISTRY):
        with engine.connect() as conn:
            done = {
                row.version
                for row in conn.execute(
                    sa.select(schema_migrations.c.version).where(
                        schema_migrations.c.component == component
                    )
                )
            }
        for m in _REGISTRY.get(component, []):
            if m.version in done:
                continue
            with engine.begin() as conn:
                m.apply(conn)
                conn.execute(
                    schema_migrations.insert().values(
                        component=component,
                        version=m.version,
                        description=m.description,
                        applied_at=datetime.now(UTC),
                    )
                )
            applied.append((component, m.version))
    return applied


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back time-zone aware.

    SQLite keeps no offset, so values are normalised to UTC on the way in and tagged UTC
    on the way out; PostgreSQL gets `timestamptz` and the same behaviour.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value!r} has no time zone; pass an aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: datetime | None, dialect: sa.Dialect
    ) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def insert_many(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert `rows` (dicts with the same keys, as for `conn.execute(table.insert(), rows)`)
    with one executemany, without that path's work per row: each column's bind processing
    (a `UTCDateTime` to UTC, a SQLite datetime to text) is done once per distinct value
    (the same value, type, time zone and `fold`),
    and the driver gets plain tuples (on PostgreSQL, one COPY). For the tens of thousands
    of rows a large work list's first sync writes."""
    if not rows:
        return 0
    dialect = conn.dialect
    columns = list(rows[0])
    # Columns left out get their scalar default, as the ordinary insert gives them.
    defaults = {}
    for column in table.columns:
        if column.key not in columns and column.default is not None:
            if not column.default.is_scalar:
                raise ValueError(f"insert_many into {table.name}: give {column.key} a value "
                                 "(its default is computed per row)")  # fmt: skip
            defaults[column.key] = column.default.arg  # type: ignore[attr-defined]
    if defaults:
        rows = [{**row, **defaults} for row in rows]
        columns += list(defaults)
    compiled = table.insert().compile(dialect=dialect, column_keys=columns)
    processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                  for name in columns]  # fmt: skip
    processed = [(i, process, {}) for i, process in enumerate(processors) if process]
    get = itemgetter(*columns)

    def bound(row: Mapping[str, Any]) -> list[Any]:
        values = list(get(row)) if len(columns) > 1 else [get(row)]
        for i, process, cache in processed:
            value = values[i]
            if value is not None:
                # Equal is not enough for a key: two local times an hour apart in the hour
                # a clock change repeats are equal but for `fold`; 1 and True are equal.
                key = (type(value), value, getattr(value, "fold", 0),
                       getattr(value, "tzinfo", None))  # fmt: skip
                try:
                    values[i] = cache[key]
                except KeyError:
                    values[i] = cache[key] = process(value)
                except TypeError:  # a value that cannot be a key (a JSON document)
                    values[i] = process(value)
        return values

    if dialect.driver == "psycopg":
        # PostgreSQL: COPY, the server's own bulk path (one stream, not a statement a row).
        columns_sql = ", ".join(dialect.identifier_preparer.quote(c) for c in columns)
        target = dialect.identifier_preparer.format_table(table)
        statement = f"COPY {target} ({columns_sql}) FROM STDIN"
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(statement) as copy:
                for values in map(bound, rows):
                    copy.write_row(values)
        except dialect.loaded_dbapi.Error as err:
            # The error SQLAlchemy raises for the same fault (IntegrityError, ...), without
            # the values written.
            raise sa.exc.DBAPIError.instance(
                statement, None, err, dialect.loaded_dbapi.Error, hide_parameters=True,
                dialect=dialect,
            ) from err  # fmt: skip
        finally:
            cursor.close()
        return len(rows)
    params: list[Any]
    if compiled.positional:
        order = [columns.index(name) for name in compiled.positiontup or []]
        if order == list(range(len(columns))):
            params = [tuple(v) for v in map(bound, rows)]
        else:
            params = [tuple(v[i] for i in order) for v in map(bound, rows)]
    else:
        params = [dict(zip(columns, v, strict=True)) for v in map(bound, rows)]
    conn.exec_driver_sql(str(compiled), params)
    return len(params)
