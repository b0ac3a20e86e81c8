"""``redis+sentinel://``: a real master, a replica and three sentinels on loopback ports.

The failover test kills the master with SIGKILL while a real worker drains, and checks that
every task ends ``succeeded`` and that producers and workers carry on with the promoted replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import runq
from runq.brokers.redis import queue_keys
from runq.brokers.redis.connection import parse
from runq.errors import BrokerUnavailable
from tests.conftest import WorkerProcess, wait_until
from tests.scale_tasks import run_counts
from tests.support.servers import RedisNotInstalled, SentinelGroup


def _group(directory: Path, down_after: int) -> Iterator[SentinelGroup]:
    try:
        group = SentinelGroup(directory, down_after=down_after)
    except RedisNotInstalled as exc:
        pytest.skip(f"{exc} (bash .ci/run installs it)")
    yield group
    group.kill()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    """Slow to call a master down (5 s): a loaded machine causes no failover in these tests."""
    yield from _group(tmp_path / "sentinel", 5000)


@pytest.fixture
def quick_sentinel(tmp_path: Path) -> Iterator[SentinelGroup]:
    """Calls a silent master down after 1 s, for the failover test."""
    yield from _group(tmp_path / "sentinel", 1000)


def test_sentinel_url_is_parsed() -> None:
    target = parse("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2:26380/mymaster/2?wait_replicas=1")
    assert (target.kind, target.service, target.db, target.password) == ("sentinel", "mymaster", 2, "s3cret")
    assert target.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (target.wait_replicas, target.wait_timeout_ms) == (1, 1000)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis+sentinel://127.0.0.1:26379", "name the master's service"),
        ("redis+sentinel://127.0.0.1:26379/svc/zero", "database must be a number"),
        ("redis+sentinel://127.0.0.1/svc/0", "host:port"),
        ("redis://127.0.0.1:6379/0?wait_replicas=one", "whole numbers"),
        ("redis+cluster://127.0.0.1:7000?wait_timeout_ms=-1", ">= 0"),
    ],
)
def test_bad_urls_are_refused_clearly(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        runq.App(url).broker  # noqa: B018  (connecting parses the URL)


def test_a_task_runs_through_the_master_the_sentinels_name(
    sentinel: SentinelGroup, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(sentinel.url)
    try:
        handle = app.enqueue("add", (2, 3))
        start_worker(sentinel.url, "--pool", "thread", "-c", "2")
        assert handle.result(timeout=30) == 5
    finally:
        app.close()
    with redis.Redis(port=sentinel.master.port) as client:  # it really went through that master
        assert client.dbsize() > 0


def test_async_producers_follow_the_master_the_sentinels_name(
    sentinel: SentinelGroup, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(sentinel.url)

    async def main() -> list[object]:
        handles = [await app.aenqueue("add", (2, 3)), *await app.aenqueue_many([runq.Signature("add", (4, 5))])]
        results = [await handle.aresult(timeout=30) for handle in handles]
        await app.aclose()
        return results

    try:
        start_worker(sentinel.url, "--pool", "thread", "-c", "2")
        assert asyncio.run(main()) == [5, 9]
    finally:
        app.close()


def test_failover_during_a_drain_loses_nothing(
    quick_sentinel: SentinelGroup, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """SIGKILL the master mid-drain; the sentinels promote the replica. Enqueues wait for the
    replica (``wait_replicas=1``), so every acknowledged task survives; a settle the dead
    master had not yet passed on is redone once the lease runs out (counted, not lost).
    After the failover the new master has no replica left, so the producer goes on without
    ``wait_replicas`` (with it every enqueue would say so and raise)."""
    log = str(tmp_path / "runs.log")
    app = runq.App(quick_sentinel.url + "?wait_replicas=1&wait_timeout_ms=5000")
    plain = runq.App(quick_sentinel.url)
    try:
        handles = [app.enqueue("runs", (log, 0.01)) for _ in range(300)]
        start_worker(quick_sentinel.url, "--pool", "thread", "-c", "4", "--lease", "2", app="tests.scale_tasks:app")
        wait_until(lambda: len(run_counts(log)) >= 60, timeout=60)
        old, replica = quick_sentinel.master, quick_sentinel.servers[1]
        killed = time.monotonic()
        old.kill()  # SIGKILL
        wait_until(lambda: quick_sentinel.master_port() == replica.port, timeout=60, interval=0.1)
        promoted = time.monotonic() - killed
        handles += [plain.enqueue("runs", (log, 0.0)) for _ in range(50)]  # the producer follows
        ids = [h.result(timeout=120) for h in handles]
        assert ids == [h.id for h in handles]  # every task succeeded, each with its own result
        counts = run_counts(log)
        assert set(counts) == set(ids)
        assert app.stats().queues["default"].succeeded == len(handles)
        duplicates = sum(counts.values()) - len(ids)
        print(f"sentinel failover: replica usable after {promoted:.1f} s; {len(ids)} tasks, {duplicates} ran twice")
        assert duplicates <= 30  # re-runs only for claims / settles in flight at the kill
    finally:
        app.close()
        plain.close()


def test_wait_replicas_confirms_the_replica_has_the_task(sentinel: SentinelGroup) -> None:
    """``?wait_replicas=1``: enqueue returns once the replica holds the task; with the replica
    stopped it raises BrokerUnavailable saying so, and the task is on the master all the same."""
    app = runq.App(sentinel.url + "?wait_replicas=1&wait_timeout_ms=300")
    try:
        handle = app.enqueue("add", (1, 1))
        with redis.Redis(port=sentinel.servers[1].port) as replica:  # already there, no polling
            assert replica.exists(queue_keys("default").payloads)
            assert replica.hexists(queue_keys("default").payloads, handle.id)
        sentinel.servers[1].kill()
        with pytest.raises(BrokerUnavailable, match=r"only \(master: 0\) of wait_replicas=1 replicas"):
            app.enqueue("add", (2, 2))
        assert app.stats().queues["default"].pending == 2  # the second task is enqueued on the master
    finally:
        app.close()


def test_events_follow_a_task_through_the_master_the_sentinels_name(sentinel: SentinelGroup) -> None:
    """h.events() and h.aevents() subscribe on the master the sentinels name (events.py)."""
    from runq.models import Outcome

    app = runq.App(sentinel.url)
    try:
        handle = app.enqueue("add", args=[1, 2])
        events = handle.events(timeout=30)
        assert next(events).status is runq.Status.PENDING
        [claim] = app.broker.claim(("default",), "w", 1, 30.0)
        assert next(events).status is runq.Status.RUNNING

        async def follow() -> list[str]:
            try:
                return [e.status.value async for e in handle.aevents(timeout=30)]
            finally:
                await app.aclose()

        app.broker.settle([Outcome(claim.id, claim.token, "succeeded", result="3")])
        assert [e.status for e in events] == [runq.Status.SUCCEEDED]
        assert asyncio.run(follow()) == ["succeeded"]
    finally:
        app.close()
