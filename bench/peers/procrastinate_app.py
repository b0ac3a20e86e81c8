"""Procrastinate: ``procrastinate --app bench.peers.procrastinate_app.app worker`` (its default
concurrency, 1 job at a time per process; W4 ``--concurrency 50``), psycopg 3 connector, on the
private benchmark database. Bulk enqueue is ``Task.batch_defer``. Procrastinate keeps no task
results, so the W3 round trip is ``defer()`` and then ``JobManager.get_job_status()`` every
5 ms until the job is ``succeeded``.
"""

from __future__ import annotations

import asyncio
import os
import time

import procrastinate
import psycopg
from procrastinate.jobs import Status

from .base import DRAIN, IO, SLEEP, Peer, Variant, command, count_completion
from .pg import ENV

URL = os.environ.get(ENV, "postgresql://invalid:1/x")
POLL = 0.005
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=URL))


@app.task(name="noop")
async def noop() -> None:
    count_completion()


@app.task(name="sleep")
async def sleep() -> None:
    await asyncio.sleep(SLEEP)
    count_completion()


@app.task(name="echo")
async def echo() -> None:
    count_completion()


class ProcrastinatePeer(Peer):
    name = "procrastinate"
    dist = "procrastinate"
    has_bulk = True
    variants = (
        Variant(
            "",
            "`procrastinate worker` x2 (default concurrency 1; W4 `--concurrency 50`); `batch_defer`; W3 polls"
            " the job status every 5 ms (no result API)",
        ),
        Variant(
            "concurrency 8",
            "`procrastinate worker --concurrency 8` x2 (runq's thread count)",
            workloads=frozenset({"W2"}),
        ),
    )

    def __init__(self) -> None:
        app.open()
        self.tasks = {"noop": noop, "sleep": sleep}

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        base = command("procrastinate", "--app", "bench.peers.procrastinate_app.app", "worker")
        if kind == IO:
            return [[*base, "--concurrency", "50"] for _ in range(2)]
        if kind == DRAIN:
            extra = ["--concurrency", "8"] if variant.name else []
            return [[*base, *extra] for _ in range(2)]
        return [base]

    def reset(self, variant: Variant) -> None:
        with psycopg.connect(URL, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone() == (None,):
                app.schema_manager.apply_schema()
            else:
                conn.execute("TRUNCATE procrastinate_jobs, procrastinate_workers RESTART IDENTITY CASCADE")

    def enqueue(self, kind: str, n: int) -> None:
        defer = self.tasks[kind].defer
        for _ in range(n):
            defer()

    def enqueue_bulk(self, kind: str, n: int, batch: int) -> None:
        batch_defer = self.tasks[kind].batch_defer
        for start in range(0, n, batch):
            batch_defer(*([{}] * min(batch, n - start)))

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        def trip(limit: float) -> None:
            job_id = echo.defer()
            deadline = time.monotonic() + limit
            while (status := app.job_manager.get_job_status(job_id)) is not Status.SUCCEEDED:
                if status in (Status.FAILED, Status.CANCELLED) or time.monotonic() > deadline:
                    raise RuntimeError(f"procrastinate round trip failed: {status}")
                time.sleep(POLL)

        trip(60)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            trip(timeout)
            samples.append(time.perf_counter() - started)
        return samples

    def close(self) -> None:
        app.close()


PEER = ProcrastinatePeer
