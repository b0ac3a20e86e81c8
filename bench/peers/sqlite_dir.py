"""The temporary directory of a ``python -m bench.sqlite`` run, for its adapters: each library
keeps its database file there (runq ``runq.db``, Huey ``huey.db``), on the same disk."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "BENCH_SQLITE_DIR"


def sqlite_file(name: str) -> Path:
    """``<run directory>/<name>``; never a default (a file someone else uses is off limits)."""
    folder = os.environ.get(ENV)
    if not folder:
        raise RuntimeError(f"{ENV} is not set: run the benchmark through python -m bench.sqlite")
    return Path(folder) / name


def remove(path: Path) -> None:
    """Delete a SQLite database with its WAL and shared-memory files (every connection to it closed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
