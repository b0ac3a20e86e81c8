"""Taskiq with taskiq-redis's ``RedisStreamBroker`` (the README's choice) and
``RedisAsyncResultBackend``: ``taskiq worker bench.peers.taskiq_app:broker`` (2 processes and
100 async tasks each by default; W3 ``--workers 1``; W4 ``--max-async-tasks 50``), ``--log-level
WARNING``. Round trip: ``wait_result()`` polls every 0.2 s by default; fast: ``check_interval=0.01``.
"""

from __future__ import annotations

import asyncio
import os
import time

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from .base import IO, ROUND_TRIP, SLEEP, AsyncPeer, Variant, command, count_completion

URL = os.environ.get("BENCH_REDIS_URL", "redis://invalid:1/0")
broker = RedisStreamBroker(url=URL).with_result_backend(RedisAsyncResultBackend(redis_url=URL))


@broker.task(task_name="noop")
async def noop() -> None:
    count_completion()


@broker.task(task_name="sleep")
async def sleep() -> None:
    await asyncio.sleep(SLEEP)
    count_completion()


@broker.task(task_name="echo")
async def echo() -> int:
    count_completion()
    return 1


class TaskiqPeer(AsyncPeer):
    name = "taskiq"
    dist = "taskiq"
    variants = (
        Variant("", "`taskiq worker --workers 2` (100 async tasks each; W4 50); `wait_result()` polls every 0.2 s"),
        Variant("poll 10 ms", "`wait_result(check_interval=0.01)`", frozenset({"W3"})),
    )

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        workers = "1" if kind == ROUND_TRIP else "2"
        base = command("taskiq", "worker", "bench.peers.taskiq_app:broker", "--workers", workers)
        base += ["--log-level", "WARNING"]
        return [[*base, "--max-async-tasks", "50"] if kind == IO else base]

    def reset(self, variant: Variant) -> None:
        self.run(broker.startup())  # declares the stream's consumer group (FLUSHALL removed it)

    def enqueue(self, kind: str, n: int) -> None:
        task = {"noop": noop, "sleep": sleep}[kind]

        async def go() -> None:
            for _ in range(n):
                await task.kiq()

        self.run(go())

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        interval = 0.01 if variant.name else 0.2

        async def go() -> list[float]:
            await (await echo.kiq()).wait_result(timeout=60, check_interval=interval)
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                result = await (await echo.kiq()).wait_result(timeout=timeout, check_interval=interval)
                if result.return_value != 1:
                    raise RuntimeError("taskiq round trip failed")
                samples.append(time.perf_counter() - started)
            return samples

        return self.run(go())

    def close(self) -> None:
        self.run(broker.shutdown())
        super().close()


PEER = TaskiqPeer
