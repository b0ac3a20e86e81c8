"""PgQueuer: ``pgqueuer.run(main)``, what ``pgq run bench.peers.pgqueuer_app:main`` runs (its
defaults: batches of 10; W4 ``batch_size=50``), psycopg 3 async driver (``PsycopgDriver``), on
the private benchmark database. (Not the ``pgq`` command itself: with the typer/click installed
here its ``--log-level`` option reaches the code as a string and it exits at start-up.)
Bulk enqueue is ``Queries.enqueue`` with lists. The W3 round trip waits with its
``CompletionWatcher`` (LISTEN/NOTIFY debounced by 50 ms, and a 5 s safety poll, by default).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pgqueuer
import psycopg
from pgqueuer import PgQueuer
from pgqueuer.core.completion import CompletionWatcher
from pgqueuer.db import PsycopgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from .base import IO, ROUND_TRIP, SLEEP, AsyncPeer, Variant, count_completion
from .pg import ENV

URL = os.environ.get(ENV, "postgresql://invalid:1/x")


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    """The worker's factory (``pgq run``; 1.x wants an async context manager)."""
    connection = await psycopg.AsyncConnection.connect(URL, autocommit=True)
    pgq = PgQueuer(PsycopgDriver(connection))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        count_completion()

    @pgq.entrypoint("sleep")
    async def sleep(job: Job) -> None:
        await asyncio.sleep(SLEEP)
        count_completion()

    @pgq.entrypoint("echo")
    async def echo(job: Job) -> None:
        count_completion()

    try:
        yield pgq
    finally:
        await connection.close()


class PgqueuerPeer(AsyncPeer):
    name = "pgqueuer"
    dist = "pgqueuer"
    has_bulk = True
    variants = (
        Variant(
            "",
            "`pgqueuer.run(main)` (= `pgq run`) x2 (batch size 10; W4 `batch_size=50`); `enqueue`"
            " with lists for bulk; W3 `CompletionWatcher` (defaults)",
            trips=10,
        ),
    )

    def __init__(self) -> None:
        super().__init__()
        self.connection = self.run(psycopg.AsyncConnection.connect(URL, autocommit=True))
        self.driver = PsycopgDriver(self.connection)
        self.queries = Queries(self.driver)

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        base = [sys.executable, "-m", "bench.peers.pgqueuer_app"]
        if kind == ROUND_TRIP:
            return [base]
        return [[*base, *(["50"] if kind == IO else [])] for _ in range(2)]

    def reset(self, variant: Variant) -> None:
        async def go() -> None:
            cur = await self.connection.execute("SELECT to_regclass('pgqueuer')")
            if await cur.fetchone() == (None,):
                await self.queries.install()
            else:
                await self.connection.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")

        self.run(go())

    def enqueue(self, kind: str, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.queries.enqueue(kind, None)

        self.run(go())

    def enqueue_bulk(self, kind: str, n: int, batch: int) -> None:
        async def go() -> None:
            for start in range(0, n, batch):
                size = min(batch, n - start)
                await self.queries.enqueue([kind] * size, [None] * size, [0] * size)

        self.run(go())

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        async def go() -> list[float]:
            async with CompletionWatcher(self.driver, queries=self.queries) as watcher:

                async def trip(limit: float) -> None:
                    (job_id,) = await self.queries.enqueue("echo", None)
                    status = await asyncio.wait_for(watcher.wait_for(job_id), limit)
                    if status != "successful":
                        raise RuntimeError(f"pgqueuer round trip failed: {status}")

                await trip(60)
                samples = []
                for _ in range(n):
                    started = time.perf_counter()
                    await trip(timeout)
                    samples.append(time.perf_counter() - started)
                return samples

        return self.run(go())

    def close(self) -> None:
        self.run(self.connection.close())
        super().close()


PEER = PgqueuerPeer

if __name__ == "__main__":  # a worker: python -m bench.peers.pgqueuer_app [batch size]
    import uvloop

    uvloop.run(pgqueuer.run("bench.peers.pgqueuer_app:main", batch_size=int(sys.argv[1]) if len(sys.argv) > 1 else 10))
