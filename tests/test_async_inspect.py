"""``app.astats()``, ``app.aworkers()``, ``app.alist()``: what a web app's status pages await,
on every broker (a real worker's heartbeat included), the same answers as the blocking calls,
never from the event loop's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import runq
from tests.conftest import EVERY_BROKER, WorkerProcess, wait_until

BROKER_KINDS = EVERY_BROKER
T = TypeVar("T")
StartWorker = Callable[..., WorkerProcess]


def run(app: runq.App, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    async def body() -> T:
        try:
            return await main()
        finally:
            await app.aclose()

    return asyncio.run(body())


def test_the_async_twins_answer_as_the_blocking_calls(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    worker = start_worker(broker_url, "--pool", "thread", "--queues", "high,default")
    done = app.enqueue("add", args=[1, 2], queue="high")
    assert done.result(timeout=30) == 3
    waiting = [app.enqueue("noop", queue="low", priority=p) for p in (1, 5)]  # no worker serves "low"
    wait_until(lambda: [w.pid for w in app.workers()] == [worker.pid], 30)

    async def main() -> tuple[Any, ...]:
        return await asyncio.gather(
            app.astats(), app.aworkers(), app.alist(status="pending", queue="low"), app.alist("succeeded")
        )

    stats, workers, pending, succeeded = run(app, main)
    assert isinstance(stats, runq.Stats) and stats.queues == app.stats().queues
    assert (stats.queues["low"].pending, stats.queues["high"].succeeded, stats.counters["enqueued"]) == (2, 1, 3)
    assert [(w.pid, w.queues) for w in workers] == [(worker.pid, ("high", "default"))]
    assert [t.id for t in pending] == [t.id for t in app.list("pending", "low")]
    assert {t.id for t in pending} == {h.id for h in waiting} and [t.id for t in succeeded] == [done.id]


def test_alist_checks_its_arguments_as_list_does(app: runq.App) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="unknown status"):
            await app.alist(status="finished")
        with pytest.raises(ValueError, match="queue"):
            await app.alist(queue="")
        assert await app.alist(limit=5) == []

    run(app, main)


def test_the_async_twins_never_call_the_broker_from_the_loop(app: runq.App) -> None:
    """A spy on the real broker's methods records the thread each call ran in."""
    broker, threads = app.broker, set()

    def spy(name: str) -> None:
        real = getattr(broker, name)

        def call(*args: Any) -> Any:
            threads.add(threading.current_thread())
            return real(*args)

        setattr(broker, name, call)

    for name in ("stats", "workers", "list"):
        spy(name)

    async def main() -> None:
        await app.astats(), await app.aworkers(), await app.alist()

    run(app, main)
    assert threads and threading.main_thread() not in threads


def test_on_memory_too() -> None:
    app = runq.App("memory://")

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    handle = add.delay(1, 2)
    app.drain()

    async def main() -> tuple[Any, ...]:
        return await asyncio.gather(app.astats(), app.aworkers(), app.alist("succeeded"))

    stats, workers, succeeded = run(app, main)
    assert stats.queues["default"].succeeded == 1 and workers == []
    assert [t.id for t in succeeded] == [handle.id]
    app.close()
