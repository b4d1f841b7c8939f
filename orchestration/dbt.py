"""dbt assets: the feature warehouse (dbt_project/) as Dagster assets.

Wiring only: the models and their rules live in dbt_project/. Every dbt model becomes
the asset `[<schema>, <model>]` (e.g. `marts/patient_features`) in the group of its
schema; dbt sources map to the same `[<schema>, <table>]` shape, so the raw tables are
exactly the ingest assets `raw/<entity>` and every model sits downstream of them. dbt
data tests surface as asset checks.
"""

import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from filelock import FileLock

from orchestration import dbt_builds
from orchestration.resources import (
    ONE_RUN_PER_DAY,
    PROGRESS,
    ClinicSettingsResource,
    WarehouseResource,
    as_of_day,
    daily_partitions,
)

DBT_PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt_project"
# Folders whose files change the manifest.
DBT_SOURCE_DIRS = ("models", "macros", "tests")

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)
# The file in which dbt keeps what it parsed, in an invocation's target folder.
PARTIAL_PARSE_FILE = "partial_parse.msgpack"


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
    """The `--vars` argument every dbt invocation of a run shares (`pipeline_build`: the
    build is the pipeline's, which keeps its own records of what it built)."""
    return json.dumps(
        {"as_of": as_of, "clinic_timezone": clinic_timezone, dbt_builds.PIPELINE_VAR: True}
    )


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


class DbtGraph:
    """What the pipeline needs of the manifest: each model's relation, the models in
    dependency order, and the sources upstream of a set of models."""

    def __init__(self, manifest: dict[str, Any], translator: DagsterDbtTranslator) -> None:
        models = {u: n for u, n in manifest["nodes"].items() if n["resource_type"] == "model"}
        self.sources = manifest["sources"]
        self.keys = {u: translator.get_asset_key(n) for u, n in models.items()}
        self.relations = {
            self.keys[u]: (n["schema"], n.get("alias") or n["name"]) for u, n in models.items()
        }
        self.parents = {u: list(n["depends_on"]["nodes"]) for u, n in models.items()}
        order = TopologicalSorter(
            {u: [d for d in p if d in models] for u, p in self.parents.items()}
        )
        # Dagster takes a multi-asset's materializations in dependency order only.
        self.in_order = [self.keys[u] for u in order.static_order()]

    def upstream_sources(self, keys: set[dg.AssetKey]) -> tuple[list[str], list[tuple[str, str]]]:
        """The raw tables (by name) and the other source tables (`(schema, name)`) that the
        models `keys` read, directly or through other models."""
        seen: set[str] = set()
        todo = [u for u, k in self.keys.items() if k in keys]
        while todo:
            uid = todo.pop()
            if uid not in seen:
                seen.add(uid)
                todo += self.parents.get(uid, [])
        found = [self.sources[u] for u in sorted(seen) if u in self.sources]
        raw = sorted(s["name"] for s in found if s["source_name"] == "raw")
        other = sorted((s["schema"], s["name"]) for s in found if s["source_name"] != "raw")
        return raw, other


def say(context: dg.AssetExecutionContext, line: str) -> None:
    """A line `audiences run` shows under the step (and Dagster logs)."""
    context.log.info(PROGRESS + line)


def reusable_build(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, graph: DbtGraph,
    name: str, variables: str, upstream_builds: tuple[str, ...] = (),
) -> tuple[str | None, dbt_builds.Build | None]:  # fmt: skip
    """The fingerprint to record after building, and the earlier build to reuse instead of
    building (None: build). Only the whole asset with all its checks is reused or recorded;
    the record of the earlier build is dropped before anything is built."""
    keys = set(context.assets_def.keys)
    whole = set(context.selected_asset_keys) == keys and set(
        context.selected_asset_check_keys
    ) == set(context.assets_def.check_keys)
    raw, other = graph.upstream_sources(keys)
    with warehouse.connect() as con:
        project = dbt_builds.project_digest(DBT_PROJECT_DIR, os.environ)
        found = dbt_builds.inputs(con, raw, other, variables, project, upstream_builds)
        last = dbt_builds.recorded(con, name)
        models = [graph.relations[k] for k in keys if k in graph.relations]
        absent = dbt_builds.missing_relations(con, models)
        if not whole:
            say(context, "dbt build runs: a subset of the models is selected")
        elif found.fingerprint is None:
            say(context, f"dbt build runs: {found.missing}")
        elif last is None or last.fingerprint != found.fingerprint:
            say(context, "dbt build runs: its inputs changed since its last clean build"
                if last else "dbt build runs: no clean build recorded")  # fmt: skip
        elif absent:
            say(context, f"dbt build runs: {', '.join(absent)} no longer in the warehouse")
        else:
            say(context, f"not run: its inputs (tables, vars, dbt project) are those of its "
                f"build in run {last.run_id[:8]} at {last.built_at.isoformat(timespec='seconds')}, "
                f"and its {len(models)} models are in the warehouse")  # fmt: skip
            return None, last
        dbt_builds.forget(con, name)
    return (found.fingerprint if whole else None), None


def reused_build(
    context: dg.AssetExecutionContext, graph: DbtGraph, last: dbt_builds.Build
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Every selected model and check, as the earlier build made them."""
    reused = {
        "dbt_build": dg.MetadataValue.text("not run: inputs unchanged since its last clean build"),
        "built_by_run": dg.MetadataValue.text(last.run_id),
        "built_at": dg.MetadataValue.timestamp(last.built_at),
    }
    selected = set(context.selected_asset_keys)
    for key in (k for k in graph.in_order if k in selected):
        yield dg.MaterializeResult(asset_key=key, metadata=reused)
    # The same tables give every test the outcome it had in the recorded build.
    for check in last.checks:
        key = dg.AssetCheckKey(dg.AssetKey(check.asset), check.name)
        if key in context.selected_asset_check_keys:
            yield dg.AssetCheckResult(
                asset_key=key.asset_key, check_name=key.name, passed=check.passed,
                severity=dg.AssetCheckSeverity(check.severity),
                metadata={**check.metadata, **reused},
            )  # fmt: skip


# dbt parses the whole project again whenever the --vars differ from those its saved
# parse state was made with, and the as-of day changes them every day. The state of the
# last invocations with each set of vars is kept here, so that the second build of a run
# (the analytics models, after the warehouse's) parses only what changed. dbt itself
# decides whether a state it is given still holds (files, vars, profile, version).
PARSE_STATES_KEPT = 4
# Each invocation's own target folder (compiled SQL, run_results.json, logs: about 5 MB)
# is kept for the newest few builds of each asset, to read after a run, and then removed.
# A folder touched within the last hour is never removed: another run may be using it.
INVOCATIONS_KEPT = 8
INVOCATION_GRACE_SECONDS = 3600


def _parse_states() -> Path:
    target = Path(dbt_project.target_path)
    return (target if target.is_absolute() else dbt_project.project_dir / target) / "parse-states"


def _parse_state_of(variables: str) -> Path:
    digest = hashlib.blake2b(variables.encode(), digest_size=8).hexdigest()
    return _parse_states() / f"{digest}.msgpack"


def parse_state_target(name: str, run_id: str, variables: str) -> Path:
    """A new target folder for one dbt invocation, holding the parse state of the last
    invocation with the same `variables`, if there is one."""
    target = _parse_states().parent / f"{name}-{run_id[:8]}-{secrets.token_hex(4)}"
    target.mkdir(parents=True)
    state = _parse_state_of(variables)
    # None kept (or unreadable): dbt parses in full, as it would anyway.
    with suppress(OSError):
        shutil.copyfile(state, target / PARTIAL_PARSE_FILE)
    return target


def prune_invocations(name: str, now: float | None = None) -> list[Path]:
    """Remove the target folders of all but the newest `INVOCATIONS_KEPT` invocations of
    the asset `name`, leaving any touched in the last hour; returns those removed."""
    now = time.time() if now is None else now
    folders = []
    with suppress(OSError):
        for folder in _parse_states().parent.glob(f"{name}-*"):
            with suppress(OSError):
                if folder.is_dir():
                    folders.append((folder.stat().st_mtime, folder))
    folders.sort()
    removed = []
    for mtime, folder in folders[:-INVOCATIONS_KEPT]:
        if now - mtime >= INVOCATION_GRACE_SECONDS:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def keep_parse_state(target: Path, variables: str) -> None:
    """Keep the parse state an invocation left in `target` for the next one with the same
    `variables` (written whole, then renamed into place), and only the newest few."""
    made = target / PARTIAL_PARSE_FILE
    if not made.exists():
        return
    state = _parse_state_of(variables)
    partial = state.with_suffix(f".{secrets.token_hex(4)}.tmp")
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made, partial)
        os.replace(partial, state)
        states = sorted(state.parent.glob("*.msgpack"), key=lambda p: p.stat().st_mtime_ns)
        for old in states[:-PARSE_STATES_KEPT]:
            old.unlink(missing_ok=True)
    except OSError:
        # A state not kept costs the next build a full parse, never the build itself.
        with suppress(OSError):
            partial.unlink(missing_ok=True)


def record_build(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, name: str,
    fingerprint: str, invocation: Any, results: list[dg.AssetCheckResult],
) -> None:  # fmt: skip
    """Record a build for reuse, with its tests' outcomes, only when every model built
    and every test passed or warned, and every check of the asset has an outcome."""
    unclean = dbt_builds.clean_run(invocation.get_artifact("run_results.json"))
    checks = [
        dbt_builds.Check(
            asset=list(r.asset_key.path), name=r.check_name, passed=r.passed,
            severity=r.severity.value,
            metadata={k: v.value for k, v in r.metadata.items()
                      if isinstance(v.value, str | int | float | bool)},
        )  # fmt: skip
        for r in results
    ]
    found = {dg.AssetCheckKey(dg.AssetKey(c.asset), c.name) for c in checks}
    if not unclean and found != set(context.assets_def.check_keys):
        unclean = f"{len(set(context.assets_def.check_keys) - found)} checks without an outcome"
    if unclean:
        say(context, f"dbt build not recorded for reuse: {unclean}")
        return
    with warehouse.connect() as con:
        dbt_builds.remember(con, name, fingerprint, context.run_id, checks)


def build_dbt_defs(partitions: dg.PartitionsDefinition | None = None) -> dg.Definitions:
    """The dbt assets, partitioned by as-of day: the warehouse models (staging,
    intermediate, marts) and, separately, the analytics models over sent messages. The
    manifest is parsed here, when the definitions are first built, not at import."""
    partitions = partitions or daily_partitions()
    manifest = ensure_manifest(dbt_project)
    translator = ClinicDbtTranslator()
    graph = DbtGraph(json.loads(manifest.read_text()), translator)

    def dbt_asset(
        name: str, what: str, reads: tuple[str, ...] = (), **selection: str
    ) -> dg.AssetsDefinition:
        """`reads`: the dbt assets whose models this one's models read."""

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
            fingerprint, last = reusable_build(context, warehouse, graph, name, variables, reads)
            if last is not None:
                yield from reused_build(context, graph, last)
                return
            context.log.info(f"dbt build of the {what} at as_of={as_of} "
                             f"clinic_timezone={settings.clinic_timezone}")  # fmt: skip
            target = parse_state_target(name, context.run_id, variables)
            with environment(**warehouse_env(warehouse)):
                invocation = dbt.cli([*PIPELINE_BUILD_ARGS, "--vars", variables],
                                     context=context, target_path=target)  # fmt: skip
                checks = []
                for event in invocation.stream():
                    if isinstance(event, dg.AssetCheckResult):
                        checks.append(event)
                    yield event
            keep_parse_state(target, variables)
            prune_invocations(name)
            if fingerprint is not None:
                record_build(context, warehouse, name, fingerprint, invocation, checks)

        return _dbt

    # Build (run + test) the staging, intermediate and mart models for the as-of day; then,
    # after the send ledger, the analytics models (conversions of sent messages). Either is
    # not run when its inputs are those of its last clean build (orchestration/dbt_builds.py).
    warehouse_dbt_assets = dbt_asset(
        "warehouse_dbt_assets", "warehouse models", exclude=ANALYTICS_MODELS
    )
    analytics_dbt_assets = dbt_asset(
        "analytics_dbt_assets", "analytics models", ("warehouse_dbt_assets",),
        select=ANALYTICS_MODELS,
    )
    return dg.Definitions(
        assets=[warehouse_dbt_assets, analytics_dbt_assets],
        resources={"dbt": DbtCliResource(project_dir=dbt_project, dbt_executable=dbt_executable())},
    )
