"""Environment-specific resources: one place switches local and production settings."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from clinic_audiences.config import (
    DEFAULT_DUCKDB_PATH,
    DEFAULT_EXTRACTS_ROOT,
    DEFAULT_STATE_DB_URL,
)
from clinic_audiences.run_lock import hold_warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse file (`DUCKDB_PATH`).

    A run holds the warehouse from its first step to its last (the code location runs every
    step in one process): a second run on the same file stops at once, naming the first.
    """

    duckdb_path: str = DEFAULT_DUCKDB_PATH

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[WarehouseResource]:
        run = context.run_id or "a run"
        with hold_warehouse(self.duckdb_path, f"Dagster run {run}"):
            yield self


class ClinicSettingsResource(dg.ConfigurableResource):
    """Run-wide settings: clinic time zone, as-of date, where extracts and state live."""

    clinic_timezone: str = "UTC"
    # YYYY-MM-DD; empty means today in the clinic time zone.
    as_of: str = ""
    extracts_dir: str = ""
    extract_format: str = "csv"
    extracts_root: str = DEFAULT_EXTRACTS_ROOT
    state_db_url: str = DEFAULT_STATE_DB_URL


def resources_from_env(**settings_overrides: str) -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location, configured from the environment."""
    from clinic_audiences.config import Settings

    env = Settings.from_env()
    values = {
        "clinic_timezone": env.clinic_timezone,
        "extracts_root": str(env.extracts_root),
        "state_db_url": env.state_db_url,
        **settings_overrides,
    }
    return {
        "warehouse": WarehouseResource(duckdb_path=str(env.duckdb_path)),
        "settings": ClinicSettingsResource(**values),
    }


AS_OF_TAG = "clinic-audiences/as_of"


def run_as_of(tags: dict[str, str], settings: ClinicSettingsResource):
    """The as-of date of a run: the run's tag (set by the sensor or CLI), else the
    settings' `as_of`, else today in the clinic time zone."""
    from clinic_audiences.config import parse_as_of

    return parse_as_of(tags.get(AS_OF_TAG) or settings.as_of or None, settings.clinic_timezone)


_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")


def key_part(name: str) -> str:
    """`name` as one part of an asset key. A name Dagster cannot carry (a file named with a
    space or an accent) becomes `invalid-<name, other characters as _>-<hash>`, so its asset
    can still exist and fail with the file's problem instead of stopping every definition."""
    if _KEY_PART.match(name):
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"invalid-{re.sub(r'[^A-Za-z0-9_-]', '_', name)}-{digest}"
