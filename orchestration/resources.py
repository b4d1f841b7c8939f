"""Environment-specific resources: one place switches local and production settings."""

from __future__ import annotations

import dagster as dg

from clinic_audiences.config import (
    DEFAULT_DUCKDB_PATH,
    DEFAULT_EXTRACTS_ROOT,
    DEFAULT_STATE_DB_URL,
)


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (`DUCKDB_PATH`)."""

    duckdb_path: str = DEFAULT_DUCKDB_PATH


class ClinicSettingsResource(dg.ConfigurableResource):
    """Run-wide settings: clinic time zone, as-of date, where extracts and state live."""

    clinic_timezone: str = "UTC"
    # YYYY-MM-DD; empty means today in the clinic time zone.
    as_of: str = ""
    extracts_dir: str = ""
    extract_format: str = "csv"
    extracts_root: str = DEFAULT_EXTRACTS_ROOT
    state_db_url: str = DEFAULT_STATE_DB_URL


def env_or(name: str, default: str) -> dg.EnvVar | str:
    """An EnvVar when the variable is set, so the UI shows where a value came from."""
    import os

    return dg.EnvVar(name) if os.environ.get(name) else default
