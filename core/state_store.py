"""Engine creation and a small versioned migration runner for the state store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
