"""runq: ``runq worker runq.cli.bench:app --pool thread`` (the thread pool's default concurrency, 8).

The tasks live in :mod:`runq.cli.bench` (shipped in the package, so ``runq bench`` has them too).
"""

from __future__ import annotations

import time

import runq
from runq.cli import bench as rb

from .base import DRAIN, IO, Peer, Variant, redis_url


class RunqPeer(Peer):
    name = "runq"
    dist = "runq"
    has_bulk = True
    variants = (
        Variant("", "`runq worker runq.cli.bench:app --pool thread` x2 (concurrency 8 each; W4 50); `enqueue_many`"),
        Variant(
            "threads 64",
            "`--pool thread --concurrency 64` x2: more threads for tasks that wait on I/O (each"
            " benchmark task waits on one Redis INCR)",
            workloads=frozenset({"W2"}),
        ),
        Variant(
            "process pool",
            "`runq worker runq.cli.bench:app` x2 with no pool flag: the default process pool (one child"
            " per CPU), what a user runs first",
            workloads=frozenset({"W2"}),
        ),
    )

    def __init__(self) -> None:
        self.url = redis_url()
        self.app = runq.App(self.url)
        self.tasks = {"noop": rb.bound(self.app, "bench.noop"), "sleep": rb.bound(self.app, "bench.sleep")}
        self.echo = rb.bound(self.app, "bench.echo")

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        if kind == DRAIN and variant.name == "process pool":
            return [rb.worker_command(self.url, pool="process") for _ in range(2)]
        if kind == DRAIN:
            return [rb.worker_command(self.url, 64 if variant.name else None) for _ in range(2)]
        if kind == IO:
            return [rb.worker_command(self.url, 50) for _ in range(2)]
        return [rb.worker_command(self.url)]

    def enqueue(self, kind: str, n: int) -> None:
        delay = self.tasks[kind].delay
        for _ in range(n):
            delay()

    def enqueue_bulk(self, kind: str, n: int, batch: int) -> None:
        signature = self.tasks[kind].s()
        for start in range(0, n, batch):
            self.app.enqueue_many([signature] * min(batch, n - start))

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        self.echo.delay().result(timeout=60)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            self.echo.delay().result(timeout=timeout)
            samples.append(time.perf_counter() - started)
        return samples

    def close(self) -> None:
        self.app.close()


PEER = RunqPeer
