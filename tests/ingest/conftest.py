from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from core.warehouse import connect
from ingest.load import LoadResult, load_all


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write one extract file exactly as given (bytes or text, no newline translation)."""
    folder = tmp_path / "extract"
    folder.mkdir()

    def _write(name: str, content: str | bytes) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return _write


@pytest.fixture
def load(tmp_path: Path) -> Callable[..., tuple[dict[str, LoadResult], duckdb.DuckDBPyConnection]]:
    """Load the extract folder into a fresh warehouse file; returns results and a connection."""
    opened: list[duckdb.DuckDBPyConnection] = []

    def _load(fmt: str = "csv") -> tuple[dict[str, LoadResult], duckdb.DuckDBPyConnection]:
        db = tmp_path / "warehouse.duckdb"
        while opened:  # a read-only handle would block the writer
            opened.pop().close()
        with connect(db) as con:
            results = load_all(con, tmp_path / "extract", fmt)
        con = duckdb.connect(str(db), read_only=True)
        con.execute("SET TimeZone = 'UTC'")
        opened.append(con)
        return results, con

    yield _load
    for con in opened:
        con.close()
