"""The operational state store (DESIGN.md section 2): durable, never rebuilt.

SQLAlchemy Core over SQLite by default (`STATE_DB_URL`), PostgreSQL for multi-user
deployments. Each component that keeps state (segments' snapshot lists, workflow stages,
the send ledger) owns its tables and an ordered list of migrations; `migrate()` applies
the ones a database has not seen yet and records them in `schema_migrations`.
"""

from state.store import Migration, connect_state, migrate, register_migrations

__all__ = ["Migration", "connect_state", "migrate", "register_migrations"]
