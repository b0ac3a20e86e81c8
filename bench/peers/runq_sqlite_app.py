"""runq on its default broker, SQLite: ``runq worker runq.cli.bench:app --pool thread --url sqlite:///…``.

The same tasks and worker command as ``runq_app`` (concurrency 8; W4 50), on ``runq.db`` in
the run's temporary directory (``BENCH_SQLITE_DIR``, set by ``python -m bench.sqlite``).
Every measurement starts on a new file.
"""

from __future__ import annotations

import runq
from runq.cli import bench as rb

from .base import DRAIN, IO, Variant
from .runq_app import RunqPeer
from .sqlite_dir import remove, sqlite_file

OFF = "synchronous=off"


class RunqSqlitePeer(RunqPeer):
    name = "runq"
    dist = "runq"
    variants = (
        Variant(
            "",
            "`runq worker runq.cli.bench:app --pool thread --url sqlite:///…/runq.db` x2 (concurrency 8 each;"
            " W4 50); WAL, `synchronous=NORMAL` (its default: fsync at checkpoints); `delay()` / `enqueue_many`;"
            " `result()` polls `PRAGMA data_version` (every 0.5 ms at first, x1.25 per look, up to 5 ms)",
        ),
        Variant(
            OFF,
            "the same on `sqlite:///…/runq.db?synchronous=off`: no fsync at all, as `SqliteHuey(fsync=False)`"
            " (a power loss can lose or corrupt the file)",
        ),
    )

    def __init__(self) -> None:  # RunqPeer's, on the SQLite file instead of the Redis URL
        self.path = sqlite_file("runq.db")
        self._open(f"sqlite:///{self.path}")

    def _open(self, url: str) -> None:
        self.url = url
        self.app = runq.App(url)
        self.tasks = {"noop": rb.bound(self.app, "bench.noop"), "sleep": rb.bound(self.app, "bench.sleep")}
        self.echo = rb.bound(self.app, "bench.echo")

    def reset(self, variant: Variant) -> None:
        """A new, empty database file (the workers of the last measurement are gone)."""
        self.app.close()
        remove(self.path)
        self._open(f"sqlite:///{self.path}{'?' + OFF if variant.name == OFF else ''}")

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        if kind == DRAIN:
            return [rb.worker_command(self.url) for _ in range(2)]
        if kind == IO:
            return [rb.worker_command(self.url, 50) for _ in range(2)]
        return [rb.worker_command(self.url)]


PEER = RunqSqlitePeer
