"""SAQ: ``saq bench.peers.saq_app.settings --workers 2`` (concurrency 10 per process by default;
W4 50). Round trip by default ``Queue.apply()`` (polls every 0.5 s); the fast variant is the
pub/sub wait, ``Job.refresh(until_complete=...)``. No bulk API.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from saq import Queue

from .base import ROUND_TRIP, SLEEP, AsyncPeer, Variant, command, count_completion

URL = os.environ.get("BENCH_REDIS_URL", "redis://invalid:1/0")
queue = Queue.from_url(URL, name="bench")


async def noop(ctx: dict[str, Any]) -> None:
    count_completion()


async def sleep(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(SLEEP)
    count_completion()


async def echo(ctx: dict[str, Any]) -> int:
    count_completion()
    return 1


settings = {
    "queue": queue,
    "functions": [noop, sleep, echo],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY") or 10),
}


class SaqPeer(AsyncPeer):
    name = "saq"
    dist = "saq"
    variants = (
        Variant("", "`saq settings --workers 2` (concurrency 10; W4 50); `Queue.apply()` polls every 0.5 s", trips=20),
        Variant("pub/sub wait", "`Job.refresh(until_complete=...)`", frozenset({"W3"})),
    )

    def __init__(self) -> None:
        super().__init__()
        self.run(queue.connect())

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        workers = "1" if kind == ROUND_TRIP else "2"
        return [command("saq", "bench.peers.saq_app.settings", "--workers", workers)]

    def enqueue(self, kind: str, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await queue.enqueue(kind)

        self.run(go())

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        async def trip(limit: float) -> None:
            if variant.name:
                job = await queue.enqueue("echo")
                assert job is not None
                await job.refresh(until_complete=limit)
                result = job.result
            else:
                result = await queue.apply("echo", timeout=limit)
            if result != 1:
                raise RuntimeError(f"saq round trip failed: {result!r}")

        async def go() -> list[float]:
            await trip(60)
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                await trip(timeout)
                samples.append(time.perf_counter() - started)
            return samples

        return self.run(go())

    def close(self) -> None:
        self.run(queue.disconnect())
        super().close()


PEER = SaqPeer
