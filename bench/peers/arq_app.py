"""arq: ``arq bench.peers.arq_app.WorkerSettings`` x2 (``max_jobs`` 10 by default; W4 50).
arq logs every job at INFO with no flag to stop it; ``on_startup`` sets its logger to WARNING,
as every library here runs without per-task log lines. Round trip: ``Job.result()``, which
polls every 0.5 s by default; the fast variant passes ``poll_delay=0.01``. No bulk API.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from .base import DRAIN, IO, SLEEP, AsyncPeer, Variant, command, count_completion

URL = os.environ.get("BENCH_REDIS_URL", "redis://invalid:1/0")


async def noop(ctx: dict[str, Any]) -> None:
    count_completion()


async def sleep(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(SLEEP)
    count_completion()


async def echo(ctx: dict[str, Any]) -> int:
    count_completion()
    return 1


async def quiet(ctx: dict[str, Any]) -> None:
    logging.getLogger("arq").setLevel(logging.WARNING)


class WorkerSettings:
    functions = [noop, sleep, echo]  # noqa: RUF012 - arq's documented shape
    redis_settings = RedisSettings.from_dsn(URL)
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY") or 10)
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL") or 0.5)
    on_startup = quiet


class ArqPeer(AsyncPeer):
    name = "arq"
    dist = "arq"
    variants = (
        Variant(
            "", "`arq WorkerSettings` x2 (max_jobs 10; W4 50; polls the queue and `Job.result()` every 0.5 s)", trips=20
        ),
        Variant(
            "poll 10 ms",
            "`WorkerSettings.poll_delay = 0.01`, `Job.result(poll_delay=0.01)`",
            frozenset({"W2", "W3", "W4"}),
            env={"BENCH_ARQ_POLL": "0.01"},
        ),
    )

    def __init__(self) -> None:
        super().__init__()
        self.pool: ArqRedis = self.run(create_pool(RedisSettings.from_dsn(URL)))

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        base = command("arq", "bench.peers.arq_app.WorkerSettings")
        return [base for _ in range(2 if kind in (DRAIN, IO) else 1)]

    def enqueue(self, kind: str, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.pool.enqueue_job(kind)

        self.run(go())

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        poll = 0.01 if variant.name else 0.5

        async def go() -> list[float]:
            await (await self.pool.enqueue_job("echo")).result(timeout=60, poll_delay=poll)  # type: ignore[union-attr]
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                job = await self.pool.enqueue_job("echo")
                assert job is not None
                if await job.result(timeout=timeout, poll_delay=poll) != 1:
                    raise RuntimeError("arq round trip failed")
                samples.append(time.perf_counter() - started)
            return samples

        return self.run(go())

    def close(self) -> None:
        self.run(self.pool.aclose())
        super().close()


PEER = ArqPeer
