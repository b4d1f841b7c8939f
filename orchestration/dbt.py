"""dbt assets: the feature warehouse (dbt_project/) as Dagster assets.

Wiring only: the models and their rules live in dbt_project/. Every dbt model becomes
the asset `[<schema>, <model>]` (e.g. `marts/patient_features`) in the group of its
schema; dbt sources map to the same `[<schema>, <table>]` shape, so the raw tables are
exactly the ingest assets `raw/<entity>` and every model sits downstream of them. dbt
data tests surface as asset checks.
"""

import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from filelock import FileLock

from orchestration.resources import (
    ONE_RUN_PER_DAY,
    ClinicSettingsResource,
    WarehouseResource,
    as_of_day,
    daily_partitions,
)

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
# Folders whose files change the manifest.
DBT_SOURCE_DIRS = ("models", "macros", "tests")

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)


def dbt_executable() -> str:
    """The dbt next to this interpreter (the project's virtualenv), else dbt on PATH."""
    local = Path(sys.executable).parent / "dbt"
    if local.exists():
        return str(local)
    return shutil.which("dbt") or "dbt"


def manifest_is_stale(project: DbtProject) -> bool:
    """True when the manifest is missing or older than any file dbt parses."""
    manifest = project.manifest_path
    if not manifest.exists():
        return True
    built = manifest.stat().st_mtime
    sources = [project.project_dir / "dbt_project.yml"]
    for folder in DBT_SOURCE_DIRS:
        sources += [p for p in (project.project_dir / folder).rglob("*") if p.is_file()]
    return any(p.stat().st_mtime > built for p in sources)


def ensure_manifest(project: DbtProject) -> Path:
    """Make `target/manifest.json` current without `dagster dev`.

    `prepare_if_dev()` only parses under `dagster dev`; a fresh clone, the CLI and the
    tests import this module without it, so parse whenever the manifest is missing or
    older than the project files.
    """
    project.prepare_if_dev()
    if manifest_is_stale(project):
        project.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        # Several processes (test workers, the CLI next to `dagster dev`) may import this
        # at once: one parses, the others wait and then find the manifest current.
        with FileLock(project.manifest_path.with_suffix(".parse-lock"), timeout=300):
            if manifest_is_stale(project):
                DbtCliResource(project_dir=project, dbt_executable=dbt_executable()).cli(
                    ["parse", "--quiet"], target_path=project.target_path
                ).wait()
    return project.manifest_path


class ClinicDbtTranslator(DagsterDbtTranslator):
    """Keys `[<schema>, <name>]` for models and sources alike; groups by schema."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        return dg.AssetKey([dbt_resource_props["schema"], dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props["schema"]


# Unit tests check the SQL, not the data: CI and analysts run them (`dbt build` in
# dbt_project/, tests/dbt); the daily run builds the models and runs the data tests.
PIPELINE_BUILD_ARGS = ("build", "--exclude-resource-type", "unit_test")


def dbt_vars(as_of: str, clinic_timezone: str) -> str:
    """The `--vars` argument every dbt invocation of a run shares."""
    return json.dumps({"as_of": as_of, "clinic_timezone": clinic_timezone})


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the dbt subprocess (DbtCliResource passes the whole
    process environment), restoring the previous values afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def warehouse_env(warehouse: WarehouseResource) -> dict[str, str]:
    """What dbt's profile reads for the warehouse: the file (dbt runs inside dbt_project/,
    so a relative path is anchored to where the user started) and the resource's memory
    limit, so that the limit the pipeline is given reaches dbt too."""
    values = {"DUCKDB_PATH": str(Path(warehouse.duckdb_path).expanduser().resolve())}
    if warehouse.memory_limit:
        values["DUCKDB_MEMORY_LIMIT"] = warehouse.memory_limit
    return values


# The analytics models read the send ledger, which the outbound assets write after the
# warehouse models: they are a separate dbt asset downstream of it.
ANALYTICS_MODELS = "path:models/analytics"


def build_dbt_defs(partitions: dg.PartitionsDefinition | None = None) -> dg.Definitions:
    """The dbt assets, partitioned by as-of day: the warehouse models (staging,
    intermediate, marts) and, separately, the analytics models over sent messages. The
    manifest is parsed here, when the definitions are first built, not at import."""
    partitions = partitions or daily_partitions()
    manifest = ensure_manifest(dbt_project)
    translator = ClinicDbtTranslator()

    def dbt_asset(name: str, what: str, **selection: str) -> dg.AssetsDefinition:
        @dbt_assets(
            manifest=manifest,
            project=dbt_project,
            dagster_dbt_translator=translator,
            name=name,
            partitions_def=partitions,
            backfill_policy=ONE_RUN_PER_DAY,
            # The warehouse is one DuckDB file with a single writer: share ingest's pool.
            pool="warehouse",
            **selection,
        )
        def _dbt(
            context: dg.AssetExecutionContext,
            dbt: DbtCliResource,
            settings: ClinicSettingsResource,
            warehouse: WarehouseResource,
        ):
            as_of = as_of_day(context)
            variables = dbt_vars(as_of.isoformat(), settings.clinic_timezone)
            context.log.info(f"dbt build of the {what} at as_of={as_of} "
                             f"clinic_timezone={settings.clinic_timezone}")  # fmt: skip
            with environment(**warehouse_env(warehouse)):
                yield from dbt.cli([*PIPELINE_BUILD_ARGS, "--vars", variables],
                                   context=context).stream()  # fmt: skip

        return _dbt

    # Build (run + test) the staging, intermediate and mart models for the as-of day; then,
    # after the send ledger, the analytics models (conversions of sent messages).
    warehouse_dbt_assets = dbt_asset(
        "warehouse_dbt_assets", "warehouse models", exclude=ANALYTICS_MODELS
    )
    analytics_dbt_assets = dbt_asset(
        "analytics_dbt_assets", "analytics models", select=ANALYTICS_MODELS
    )
    return dg.Definitions(
        assets=[warehouse_dbt_assets, analytics_dbt_assets],
        resources={"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())},
    )
