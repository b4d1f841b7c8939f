"""What the one assembly point promises: one segment library for every stage, the memory
limit reaching every reader, nothing built at import, the contract inside the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb

from core.settings import Settings
from core.warehouse import Warehouse
from orchestration.resources import resources_for

ROOT = Path(__file__).resolve().parents[2]

SEGMENT = """\
name: Saved as .yml
entity: patient
include:
  match: all
  conditions:
    - {field: status, op: eq, value: active}
"""
CAMPAIGN = """\
name: Uses the .yml segment
segment: {slug}
template: {local: reactivation}
priority: 10
schedule: {every: day}
"""


def test_a_segment_saved_as_yml_is_a_segment_for_campaigns_too(tmp_path):
    from outbound.run import OutboundSettings, campaign_set
    from segments.library import library_folders
    from segments.validation import read_library

    segments, campaigns = tmp_path / "segments", tmp_path / "campaigns"
    segments.mkdir()
    campaigns.mkdir()
    (segments / "my-actives.yml").write_text(SEGMENT)
    (campaigns / "to-actives.yaml").write_text(CAMPAIGN.replace("{slug}", "my-actives"))
    settings = Settings(duckdb_path=tmp_path / "w.duckdb", segments_path=segments,
                        campaigns_path=campaigns)  # fmt: skip
    # The segments stage sees it ...
    library = read_library(library_folders(segments), None)
    assert library.get("my-actives") is not None
    # ... and so does outbound: the campaign over it can run.
    loaded = campaign_set(OutboundSettings.of(settings))
    assert [c.slug for c in loaded.campaigns if c.segment == "my-actives"] == ["to-actives"]
    assert not [p for p in loaded.problems if "to-actives" in p]


def test_the_memory_limit_reaches_every_reader_and_dbt(tmp_path):
    from orchestration.dbt import warehouse_env

    settings = Settings(duckdb_path=tmp_path / "w.duckdb", duckdb_memory_limit="100MB")
    warehouse = resources_for(settings)["warehouse"]
    with warehouse.connect() as con:
        pass  # creates the file
    with Warehouse(settings.duckdb_path, settings.duckdb_memory_limit).connect(
        read_only=True
    ) as con:
        limit = con.execute("select current_setting('memory_limit')").fetchall()[0][0]
    # 100 MB = 100,000,000 bytes, which DuckDB shows in binary units: 95.3 MiB.
    assert limit == "95.3 MiB"
    assert warehouse_env(warehouse)["DUCKDB_MEMORY_LIMIT"] == "100MB"
    # Without a limit, DuckDB's own default stands (not 100 MB).
    with duckdb.connect(str(settings.duckdb_path), read_only=True) as con:
        assert con.execute("select current_setting('memory_limit')").fetchall()[0][0] != limit


def test_importing_the_code_location_builds_nothing(tmp_path):
    """dbt is not run (no parse) and no definition is built when the module is imported,
    even with no manifest at all: Dagster builds them when it loads the code location."""
    import shutil

    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".venv", "var", ".git", "target", "logs", "__pycache__", "*.duckdb", "tests"
    ))  # fmt: skip
    assert not (copy / "dbt_project" / "target" / "manifest.json").exists()
    probe = """
import subprocess, sys
started = []
class Recording(subprocess.Popen):
    def __init__(self, args, *a, **k):
        started.append(args)
        super().__init__(args, *a, **k)
subprocess.Popen = Recording
import orchestration.definitions, orchestration.dbt
assert orchestration.dbt.__file__.startswith(sys.argv[1] if len(sys.argv) > 1 else '')
print(len([a for a in started if "dbt" in " ".join(map(str, a))]))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=copy, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(copy)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0"
    assert not (copy / "dbt_project" / "target" / "manifest.json").exists()


# The brief the project was first written from lives outside the repository; its file name
# is spelt in two parts so that this search is not itself a reference to it.
OUTSIDE_DOCUMENT = "DESIGN" ".md"


def test_the_repository_refers_to_no_document_outside_it():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    offenders = []
    for name in files:
        path = ROOT / name
        text_file = path.suffix in (".py", ".md", ".sql", ".yml", ".yaml", ".toml")
        if text_file and path.is_file() and OUTSIDE_DOCUMENT in path.read_text(errors="replace"):
            offenders.append(name)
    assert offenders == []
