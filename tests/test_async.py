"""Asyncio producers (``adelay``, ``aenqueue``, ``aenqueue_many``, ``aresult``, ``astatus``,
``acancel``) on every broker: the same semantics as the synchronous calls, and the event loop
never blocked (native redis.asyncio on Redis, a thread on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

import runq
from runq.brokers.aio import ThreadedBroker
from runq.models import Message, new_task_id
from tests.conftest import WITH_POSTGRES, WorkerProcess
from tests.support.servers import RedisCluster, RedisServer, free_port
from tests.test_security import make_ca, tls_server  # noqa: F401  (a TLS-only redis-server)

BROKER_KINDS = WITH_POSTGRES
T = TypeVar("T")
StartWorker = Callable[..., WorkerProcess]


def run(app: runq.App, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` in a fresh event loop and close the App's async side in that loop."""

    async def body() -> T:
        try:
            return await main()
        finally:
            await app.aclose()

    return asyncio.run(body())


def tasks_of(app: runq.App) -> tuple[runq.Task[Any, Any], runq.Task[Any, Any]]:
    """The producer's side of tests/tasks.py: same names, bodies never run here."""

    def add(a: int, b: int) -> int:
        return a + b

    def echo(*args: Any, **kwargs: Any) -> Any:
        return {"args": list(args), "kwargs": kwargs}

    return app.task(name="add")(add), app.task(name="echo")(echo)


def test_async_enqueued_tasks_run_on_a_real_worker(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    add, echo = tasks_of(app)
    start_worker(broker_url, "--concurrency", "4")

    async def main() -> list[Any]:
        handles = [
            await add.adelay(2, 3),
            await add.options(priority=9, queue="default").adelay(10, 20),
            await app.aenqueue("echo", [1], {"x": "y"}),
            *await app.aenqueue_many([add.s(1, 1), echo.s("z").options(priority=3)]),
            await add.s(4, 4).adelay(),
        ]
        return await runq.GroupHandle(app, handles).aresults(timeout=60)

    results = run(app, main)
    assert results == [5, 30, {"args": [1], "kwargs": {"x": "y"}}, 2, {"args": ["z"], "kwargs": {}}, 8]


def test_validation_and_idempotency_match_the_sync_calls(app: runq.App) -> None:
    add, _ = tasks_of(app)

    async def main() -> None:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            await add.adelay(object(), 1)
        with pytest.raises(TypeError, match="JSON-serialisable"):
            await app.aenqueue("add", [{1, 2}, 3])
        with pytest.raises(ValueError, match="priority"):
            await app.aenqueue("add", [1, 2], priority=101)
        with pytest.raises(TypeError, match="unknown task option"):
            await app.aenqueue("add", [1, 2], colour="red")
        with pytest.raises(TypeError, match="signatures"):
            await app.aenqueue_many([add.s(1, 2), "add"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="JSON-serialisable"):  # all or nothing
            await app.aenqueue_many([add.s(1, 2), add.s(object(), 2)])
        assert await app.aenqueue_many([]) == []
        assert app.list() == []  # nothing of the above was enqueued

        first = await add.options(key="inv-42").adelay(1, 2)
        again = await add.options(key="inv-42").adelay(3, 4)
        assert again == first
        assert add.options(key="inv-42").delay(5, 6) == first  # the sync path agrees
        info = await first.ainfo()
        assert info is not None and info.args == [1, 2]
        assert info == app.info(first.id)

    run(app, main)


def test_astatus_acancel_and_aresult_follow_the_lifecycle(app: runq.App) -> None:
    add, _ = tasks_of(app)

    async def main() -> None:
        later = await add.options(delay=60).adelay(1, 2)
        pending = await add.adelay(3, 4)
        assert await later.astatus() is runq.Status.SCHEDULED
        assert await pending.astatus() is runq.Status.PENDING
        with pytest.raises(TimeoutError, match="still pending"):
            await pending.aresult(timeout=0.2)
        assert await later.acancel() is True
        assert await later.acancel() is False  # already final
        assert await later.astatus() is runq.Status.CANCELLED
        with pytest.raises(runq.TaskCancelled):
            await later.aresult(timeout=5)
        assert await app.acancel(pending.id) is True
        assert pending.status() is runq.Status.CANCELLED  # the sync view agrees

        gone = app.handle(new_task_id("default"))
        assert await gone.ainfo() is None
        with pytest.raises(runq.TaskNotFound):
            await gone.astatus()
        with pytest.raises(runq.TaskNotFound):
            await gone.aresult(timeout=1)

    run(app, main)


def test_a_cancelled_aresult_leaves_the_app_usable(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    """``asyncio.wait_for`` giving up on ``aresult`` (a web request timing out) breaks nothing."""
    add, _ = tasks_of(app)

    async def main() -> int:
        waiting = await add.adelay(1, 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(waiting.aresult(), 0.3)
        start_worker(broker_url, "--concurrency", "2")
        return await (await add.adelay(20, 22)).aresult(timeout=60) + await waiting.aresult(timeout=60)

    assert run(app, main) == 44


def test_the_loop_keeps_running_during_1000_adelay_calls(app: runq.App) -> None:
    """A ticker must keep ticking while a producer awaits 1,000 ``adelay()`` one after another.

    A blocking ``adelay`` (an ``async def`` around the sync call) never yields, so the ticker
    would not tick at all until the loop ends: one gap as long as the whole run.
    """
    add, _ = tasks_of(app)

    async def main() -> tuple[int, float, float]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.001)

        await add.adelay(0, 0)  # connect first: that is allowed to take a while (in a thread anyway)
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.monotonic()
        for i in range(1000):
            await add.adelay(i, i)
        elapsed = time.monotonic() - started
        stop.set()
        await ticking
        during = [t for t in ticks if t >= started]
        gaps = [b - a for a, b in zip([started, *during], [*during, started + elapsed], strict=True)]
        return len(during), max(gaps), elapsed

    count, max_gap, elapsed = run(app, main)
    assert app.stats().queues["default"].pending == 1001
    assert count >= 20, f"the ticker ticked {count} times in {elapsed:.2f}s of adelay() calls"
    assert max_gap < max(0.25, elapsed / 4), f"the loop stalled {max_gap:.3f}s of {elapsed:.2f}s"


def test_concurrent_producers_share_one_app(app: runq.App) -> None:
    """Many coroutines enqueue at once through one App; every id is distinct and stored."""
    add, _ = tasks_of(app)

    async def main() -> list[runq.Handle[Any]]:
        return await asyncio.gather(*(add.adelay(i, i) for i in range(300)))

    handles = run(app, main)
    assert len({h.id for h in handles}) == 300
    assert app.stats().queues["default"].pending == 300


def test_coalesced_enqueues_keep_their_own_semantics(app: runq.App) -> None:
    """Concurrent ``adelay()`` calls share broker round trips, yet each keeps its options and
    its idempotency key, and a caller cancelled mid-flight strands nobody else."""
    add, _ = tasks_of(app)

    async def main() -> None:
        adapter = await app.async_broker()
        sent = adapter.enqueue
        batches: list[int] = []

        async def counted(messages: Sequence[Message], key_ttl: float) -> list[str]:
            batches.append(len(messages))
            return await sent(messages, key_ttl)

        adapter.enqueue = counted  # type: ignore[method-assign]
        keyed = [add.options(key="same").adelay(i, i) for i in range(5)]
        others = [add.options(queue="other", priority=i % 7).adelay(i, 0) for i in range(200)]
        handles = await asyncio.gather(*keyed, *others)
        assert sum(batches) == 205 and len(batches) <= 5, batches  # shared round trips
        assert len({h.id for h in handles[:5]}) == 1  # one task for the key
        assert len({h.id for h in handles[5:]}) == 200
        info = await handles[-1].ainfo()
        assert info is not None and (info.queue, info.priority, info.args) == ("other", 199 % 7, [199, 0])

        doomed = asyncio.ensure_future(add.adelay(1, 1))
        rest = asyncio.gather(*(add.adelay(2, 2) for _ in range(50)))
        doomed.cancel()
        assert len(await rest) == 50

    run(app, main)
    assert app.stats().queues["default"].pending >= 51  # the key's task and the 50 (the cancelled one may be in)
    assert app.stats().queues["other"].pending == 200


def test_one_app_in_two_event_loops(app: runq.App) -> None:
    """An App outlives an event loop (tests, scripts calling asyncio.run twice): each loop gets its own connections."""
    add, _ = tasks_of(app)

    async def enqueue() -> str:
        return (await add.adelay(1, 2)).id

    first, second = run(app, enqueue), run(app, enqueue)
    assert first != second and app.info(first) is not None and app.info(second) is not None


def test_threaded_brokers_never_use_the_event_loop_thread(app: runq.App, broker_url: str) -> None:
    async def main() -> Any:
        return await app.async_broker()

    adapter = run(app, main)
    assert isinstance(adapter, ThreadedBroker) == (not broker_url.startswith("redis"))


def test_redis_recovers_a_lost_functions_library(app: runq.App, broker_url: str) -> None:
    """A Redis restart without persistence loses the library: the next async call loads it again."""
    if not broker_url.startswith("redis"):
        pytest.skip("Redis only")
    add, _ = tasks_of(app)

    async def main() -> None:
        first = await add.adelay(1, 2)
        with redis.Redis.from_url(broker_url) as client:
            client.function_flush()
        second = await add.adelay(3, 4)
        assert await second.astatus() is runq.Status.PENDING
        assert await first.acancel() is True

    run(app, main)


def test_async_producers_on_a_redis_cluster(redis_cluster: RedisCluster, start_worker: StartWorker) -> None:
    """redis.asyncio.cluster on the session's real cluster, queues in different slots."""
    redis_cluster.flush()
    app = runq.App(redis_cluster.url)
    add, _ = tasks_of(app)
    start_worker(redis_cluster.url, "--queues", "default,other,third", "--concurrency", "2")

    async def main() -> list[Any]:
        handles = [
            await add.adelay(1, 2),
            await add.options(queue="other").adelay(3, 4),
            *await app.aenqueue_many([add.s(5, 6).options(queue="third"), add.s(7, 8)]),
        ]
        later = await add.options(queue="other", delay=60).adelay(0, 0)
        assert await later.acancel() is True
        assert await later.astatus() is runq.Status.CANCELLED
        return [await handle.aresult(timeout=60) for handle in handles]

    try:
        assert run(app, main) == [3, 7, 11, 15]
    finally:
        app.close()


def test_redis_aresult_waits_without_polling(app: runq.App, broker_url: str) -> None:
    """On Redis ``aresult`` blocks on the task's notification: a handful of commands in 1.5 s, not hundreds."""
    if not broker_url.startswith("redis"):
        pytest.skip("Redis only (SQLite polls its data version in a thread, as result() does)")
    add, _ = tasks_of(app)

    def commands() -> int:
        with redis.Redis.from_url(broker_url) as client:
            return int(client.info("stats")["total_commands_processed"])

    async def main() -> int:
        handle = await add.adelay(1, 2)
        before = commands()
        with pytest.raises(TimeoutError):
            await handle.aresult(timeout=1.5)
        return commands() - before

    assert run(app, main) < 20


def test_async_producers_over_tls(tls_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    """``rediss://`` with a private CA: redis.asyncio's TLS connection; a wrong CA is BrokerUnavailable."""
    tls_server.flush()
    app = runq.App(tls_server.url)
    add, _ = tasks_of(app)

    async def main() -> None:
        handle = await add.adelay(1, 2)
        assert await handle.astatus() is runq.Status.PENDING
        assert await handle.acancel() is True

    run(app, main)
    other_ca, _ = make_ca(tmp_path, "someone-else")
    wrong = runq.App(f"rediss://localhost:{tls_server.port}/0?ssl_ca_certs={other_ca}")
    wrong_add, _ = tasks_of(wrong)

    async def refused() -> None:
        with pytest.raises(runq.BrokerUnavailable, match="certificate verify failed"):
            await wrong_add.adelay(1, 2)

    try:
        run(wrong, refused)
    finally:
        wrong.close()


def test_asyncio_run_without_aclose_leaves_nothing_open(app: runq.App) -> None:
    """``asyncio.run(h.aresult())`` from sync code: the loop's shutdown closes its connections
    (else the garbage collector would, after the loop, with a ResourceWarning: an error here)."""
    add, _ = tasks_of(app)
    handle = asyncio.run(add.adelay(1, 2))
    assert asyncio.run(handle.astatus()) is runq.Status.PENDING
    assert asyncio.run(handle.acancel()) is True
    gc.collect()
    assert handle.status() is runq.Status.CANCELLED  # the synchronous side is untouched


def test_closing_waits_for_threads_still_using_the_broker(app: runq.App, broker_url: str) -> None:
    """A cancelled ``aresult`` leaves its thread in a wait slice; closing the App must not close
    the broker's connections under it (SQLite: a segfault), so it waits for that thread first."""
    if broker_url.startswith("redis"):
        pytest.skip("threaded brokers only")
    add, _ = tasks_of(app)

    async def main() -> None:
        handle = await add.adelay(1, 1)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(handle.aresult(), 0.05)
        assert any(t.name.startswith("runq-async-wait") for t in threading.enumerate())
        await app.aclose()
        assert not any(t.name.startswith("runq-async") for t in threading.enumerate())

    asyncio.run(main())
    assert app.info(app.list()[0].id) is not None  # the App reconnects after close


def test_a_broker_error_reaches_every_call_of_its_batch() -> None:
    """No Redis on that port: each of 50 concurrent ``adelay()`` raises BrokerUnavailable (none hangs)."""
    app = runq.App(f"redis://127.0.0.1:{free_port()}/0")
    add, _ = tasks_of(app)

    async def main() -> list[Any]:
        return await asyncio.wait_for(
            asyncio.gather(*(add.adelay(i, i) for i in range(50)), return_exceptions=True), 60
        )

    outcomes = run(app, main)
    assert len(outcomes) == 50 and all(isinstance(o, runq.BrokerUnavailable) for o in outcomes), outcomes[:3]
