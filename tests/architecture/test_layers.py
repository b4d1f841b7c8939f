"""The system's layers: imports only go down, and only the top reads the environment."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Below the top (the CLI and the Dagster code location): plain values in, no environment.
BELOW_THE_TOP = ("core", "ingest", "extract", "segments", "workflow", "outbound", "webapp")


def environment_reads(source: str) -> list[int]:
    """Lines of `source` that read the process environment: os.environ, os.getenv,
    os.environb, or `environ` / `getenv` imported from os."""
    names = ("environ", "environb", "getenv", "putenv")

    def reads(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return node.value.id == "os" and node.attr in names
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            return any(a.name in names for a in node.names)
        return False

    lines = [node.lineno for node in ast.walk(ast.parse(source)) if reads(node)]
    return sorted(lines)


def test_the_detector_finds_every_way_of_reading_the_environment():
    found = environment_reads(
        "import os\nfrom os import environ\na = os.environ.get('X')\nb = os.getenv('Y')\n"
        "c = dict(os.environ)\nd = 'os.environ in a string'\n"
    )
    assert found == [2, 3, 4, 5]


def test_no_module_below_the_top_reads_the_environment():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in BELOW_THE_TOP
        for path in sorted((ROOT / package).rglob("*.py"))
        for line in environment_reads(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], f"read the setting at the top and pass it down: {offenders}"


def _lint_imports() -> str:
    exe = Path(sys.executable).parent / "lint-imports"
    return str(exe) if exe.exists() else (shutil.which("lint-imports") or "")


@pytest.fixture
def linter() -> str:
    exe = _lint_imports()
    if not exe:
        pytest.fail("lint-imports (import-linter) is not installed; `make install` installs it")
    return exe


def test_the_import_contracts_hold(linter):
    done = subprocess.run([linter, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]


def test_an_import_that_climbs_up_breaks_the_layer_contract(linter, tmp_path):
    """The contract can fail: a copy of the project in which the segment model imports
    the work-list package (a higher layer) is refused."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".venv", "var", ".git", "target", "logs", "__pycache__", "*.duckdb", "tests"
    ))  # fmt: skip
    model = copy / "segments" / "model.py"
    model.write_text(model.read_text() + "\nimport workflow.planning  # noqa\n")
    env = {"PATH": str(Path(linter).parent), "PYTHONPATH": str(copy)}
    done = subprocess.run([linter, "--no-cache"], cwd=copy, capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert done.returncode != 0
    assert "segments.model -> workflow.planning" in done.stdout
