"""One pipeline run per warehouse at a time.

DuckDB allows one writer per file, and a run is a sequence of writers (ingest, dbt, the
segment and work-list steps) that must all see the same day's data. So a run holds a lock
beside the warehouse file (`<warehouse>.run-lock`) from its first step to its last. A second
run stops at once, naming the run that holds it. The lock is the operating system's
(`flock`), so a run that crashed or was killed holds nothing.

Within one process the lock is re-entrant: the CLI takes it before starting Dagster, and
the Dagster resource then finds it already held.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path


class WarehouseBusy(RuntimeError):
    """Another run holds the warehouse; the message says which."""


_held: dict[str, tuple[int, int]] = {}  # lock path → (file descriptor, depth)
_guard = threading.Lock()


def lock_path(duckdb_path: str | Path) -> Path:
    path = Path(duckdb_path).expanduser().resolve()
    return path.with_name(path.name + ".run-lock")


def holder(duckdb_path: str | Path) -> str:
    """Who holds (or last held) the warehouse, as a person reads it."""
    try:
        info = json.loads(lock_path(duckdb_path).read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another run"
    return (
        f"another run (pid {info.get('pid')} on {info.get('host')}, started "
        f"{info.get('started')}, {info.get('purpose')})"
    )


@contextmanager
def hold_warehouse(duckdb_path: str | Path, purpose: str) -> Iterator[None]:
    """Hold the warehouse for a run; raises WarehouseBusy at once if another run has it."""
    path = lock_path(duckdb_path)
    key = str(path)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            _release(key)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WarehouseBusy(
            f"{holder(duckdb_path)} holds the warehouse {Path(duckdb_path)}; one run at a "
            "time writes it. Wait for that run to finish (or stop it), then run again"
        ) from None
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "purpose": purpose,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    with _guard:
        _held[key] = (fd, 1)
    try:
        yield
    finally:
        _release(key)


def run_in_progress(duckdb_path: str | Path) -> bool:
    """Whether a run (in another process, or this one) holds the warehouse now. Readers
    that can wait (the web app) leave the file alone meanwhile, so that the run's steps
    never find a reader in their way."""
    path = lock_path(duckdb_path)
    if str(path) in _held:
        return True
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _release(key: str) -> None:
    with _guard:
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
            return
        del _held[key]
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
