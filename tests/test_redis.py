"""Redis-only behaviour: cluster-safe keys, outages, durability, bounded memory, blocking waits.

The broker rules shared with SQLite live in test_conformance.py; these tests cover
what only the Redis broker promises. They run against private redis-server
processes (the session fixture, or their own when they kill or reconfigure it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import key_slot

import runq
from runq.brokers.redis import BATCH, RedisBroker, queue_keys
from runq.brokers.redis.keys import FUNCTIONS
from runq.brokers.redis.scripts import Call, Functions
from runq.models import Outcome, ProgressReport, Status, new_task_id
from tests.conftest import RedisServer, WorkerProcess, wait_until

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def app(url: str) -> Iterator[runq.App]:
    application = runq.App(url)
    yield application
    application.close()


@pytest.fixture
def broker(app: runq.App) -> RedisBroker:
    assert isinstance(app.broker, RedisBroker)
    return app.broker


@pytest.fixture
def client(url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(url, decode_responses=True)
    yield connection
    connection.close()


def drain(broker: RedisBroker, queues: tuple[str, ...] = ("default",), result_ttl: float = 60.0) -> int:
    """Claim and succeed everything ready; returns how many ran."""
    done = 0
    while claims := broker.claim(queues, "test", 100, 30):
        outcomes = [Outcome(c.id, c.token, "succeeded", result="1", result_ttl=result_ttl) for c in claims]
        assert all(broker.settle(outcomes))
        done += len(claims)
    return done


# -- cluster safety ----------------------------------------------------------------------


def test_every_script_call_stays_in_one_hash_slot(
    app: runq.App, broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str]]] = []
    original = Functions._command

    def recording(self: Functions, call: Call) -> Any:
        calls.append((call.name, [str(key) for key in call.keys]))
        return original(self, call)

    monkeypatch.setattr(Functions, "_command", recording)
    app.enqueue_many([runq.Signature("add", (1, 2)).options(queue=q, key="k") for q in ("a", "b", "c")])
    delayed = app.enqueue("add", args=[1, 2], queue="b", delay=0.01)
    claims = broker.claim(("a", "b", "c"), "w", 10, 30)
    claims += wait_until(lambda: broker.claim(("b",), "w", 10, 30))
    assert len(claims) == 4 and all(broker.renew(claims, 30))
    assert broker.progress([ProgressReport(c.id, c.token, 0.5, "half") for c in claims]) == [True] * 4
    broker.follow(claims[0].id).close()  # follow.lua (and a subscription)
    stale = Outcome(claims[-1].id, "stale", "succeeded", result="1")
    ok = [Outcome(c.id, c.token, "succeeded", result="1") for c in claims[:-1]]
    assert broker.settle([*ok, stale]) == [True, True, True, False]
    assert app.cancel(delayed.id) and app.retry(delayed.id)
    assert broker.wait(delayed.id, 0.05) is not None  # pending: watch, block...
    wait_until(lambda: ("unwatch", [queue_keys("b").waiters]) in calls)  # ...and the shared waiter unwatches
    assert len(app.list()) == 4 and app.stats().counters["succeeded"] == 3
    assert app.purge(None) == 3
    parent = app.enqueue("add", args=[1, 2], queue="a")
    app.enqueue("add", args=[3], queue="b", after=[parent.id])  # link.lua runs in a's slot
    [claim] = broker.claim(("a",), "w", 1, 30)
    assert broker.settle([Outcome(claim.id, claim.token, "succeeded", result="3")]) == [True]  # resolve.lua in b's
    assert broker.acquire_rate("add", 5, 1) == 0 and broker.breaker("add", "allow", 3, 1) == 0
    broker.add_task_metrics({"a": {"succeeded:add": 1}, "b": {"failed:add": 2}})  # metrics.lua, per queue
    assert broker.pause("c", True) and broker.pause("c", False)  # pause.lua

    broker.wait_for_work(("b",), 0.01)  # due.lua
    assert {name for name, _ in calls} == set(FUNCTIONS)
    for name, keys in calls:
        assert keys, name
        assert len({key_slot(key.encode()) for key in keys}) == 1, (name, keys)
        tag = keys[0].split("}")[0] + "}"
        assert all(key.startswith(tag) for key in keys), (name, keys)


def test_keys_of_a_queue_share_its_hash_tag() -> None:
    keys = queue_keys("emails")
    assert all(key.startswith("runq:{emails}:") for key in keys)
    assert len(set(keys)) == len(keys) == 24
    assert keys.scheduled_seq == "runq:{emails}:status:scheduled"
    assert keys.by_status(Status.FAILED) == "runq:{emails}:status:failed"


# -- outages ---------------------------------------------------------------------------------


def test_producer_raises_broker_unavailable_with_masked_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.kill()
    url = f"redis://someone:s3cret@127.0.0.1:{server.port}/0"
    app = runq.App(settings=runq.Settings(url=url, connect_timeout=1.0))
    try:
        started = time.monotonic()
        with pytest.raises(runq.BrokerUnavailable) as error:
            app.enqueue("add", args=[1, 2])
        assert time.monotonic() - started < 1.0 + 2.0  # bounded by connect_timeout, not a hang
        assert "s3cret" not in str(error.value)
        assert "someone:***@127.0.0.1" in str(error.value)
        for call in (app.stats, lambda: app.info(new_task_id("default")), app.broker.ping):
            with pytest.raises(runq.BrokerUnavailable):
                call()
    finally:
        app.close()


def test_kill_9_with_appendfsync_always_loses_no_task(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    app = runq.App(server.url)
    try:
        ids = [app.enqueue("add", args=[i, i]).id for i in range(50)]
        ids += [h.id for h in app.enqueue_many([runq.Signature("add", (i, i)) for i in range(50)])]
        ids.append(app.enqueue("add", args=[0, 0], delay=0.2, key="late").id)
        server.kill()  # SIGKILL: no shutdown save; only the append-only file survives
        server.start()
        assert app.stats().counters["enqueued"] == 101
        claimed: list[str] = []

        def claimed_all() -> bool:
            claimed.extend(c.id for c in app.broker.claim(("default",), "w", 1000, 30))
            return len(claimed) == 101

        wait_until(claimed_all)
        assert sorted(claimed) == sorted(ids)
    finally:
        app.close()
        server.kill()


# -- memory stays bounded --------------------------------------------------------------------


def test_finished_task_is_deleted_after_result_ttl_and_its_keys_expire(
    app: runq.App, broker: RedisBroker, client: redis.Redis
) -> None:
    handle = app.enqueue("add", args=[1, 2], key="once")
    waiter = threading.Thread(target=lambda: handle.result(timeout=10))
    waiter.start()
    wait_until(lambda: client.hexists(queue_keys("default").waiters, handle.id))
    [claim] = broker.claim(("default",), "w", 1, 30)
    broker.settle([Outcome(claim.id, claim.token, "succeeded", result="3", result_ttl=0.3)])
    waiter.join()
    per_task = [key for key in client.scan_iter("runq:*") if handle.id in key or ":key:" in key]
    assert per_task and all(client.pttl(key) > 0 for key in per_task)  # done list and idempotency key
    wait_until(lambda: app.info(handle.id) is None)  # hidden once past its expiry...
    assert broker.claim(("default",), "w", 1, 30) == []  # ...and deleted by the next script
    keys = queue_keys("default")
    assert not client.hexists(keys.tasks, handle.id) and not client.hexists(keys.payloads, handle.id)
    assert client.zcard(keys.succeeded) == client.zcard(keys.expiring) == 0


def test_memory_returns_to_baseline_after_tasks_expire(app: runq.App, broker: RedisBroker, client: redis.Redis) -> None:
    def run(count: int) -> None:
        app.enqueue_many([runq.Signature("add", (i, i)).options(result_ttl=0.2) for i in range(count)])
        assert drain(broker, result_ttl=0.2) == count
        wait_until(lambda: broker.stats().queues == {})  # stats trims expired tasks too

    run(1)
    baseline = sorted(client.keys("*"))
    run(1000)
    assert sorted(client.keys("*")) == baseline
    keys = queue_keys("default")
    assert client.hlen(keys.tasks) == client.hlen(keys.payloads) == client.hlen(keys.waiters) == 0
    assert client.llen(keys.samples) <= 4096
    assert client.hlen(keys.throughput) <= 121


def test_list_indexes_scheduled_tasks_an_older_runq_left_unindexed(
    app: runq.App, broker: RedisBroker, client: redis.Redis
) -> None:
    """list() orders scheduled tasks by status:scheduled (seq), which an older runq did not keep:
    its scheduled tasks are indexed by the first list that finds the index short, and purged
    (by eta) all the same."""
    ids = [app.enqueue("add", args=[i, i], delay=60).id for i in range(3)]
    keys = queue_keys("default")
    client.delete(keys.scheduled_seq)  # as an older runq left them
    assert [t.id for t in app.list(status="scheduled", limit=2)] == ids[:0:-1]
    assert client.zcard(keys.scheduled_seq) == 3
    client.delete(keys.scheduled_seq)
    assert broker.purge(Status.SCHEDULED, None) == 3
    assert client.zcard(keys.scheduled) == 0


def test_wake_list_never_grows(app: runq.App, broker: RedisBroker, client: redis.Redis) -> None:
    wake = queue_keys("default").wake
    for i in range(200):
        app.enqueue("add", args=[i, i])
    app.enqueue_many([runq.Signature("add", (i, i)) for i in range(200)])
    assert 0 < client.llen(wake) <= 32
    assert drain(broker) == 400
    assert client.exists(wake) == 0  # nothing ready: no stale wake-ups left behind


def test_claim_bounds_its_promotion_work(app: runq.App, broker: RedisBroker, client: redis.Redis) -> None:
    app.enqueue_many([runq.Signature("add", (i, i)).options(delay=0.05) for i in range(BATCH + 50)])
    wait_until(lambda: broker.claim(("default",), "w", 1, 30))
    assert client.zcard(queue_keys("default").scheduled) == 50  # the rest waits for the next call
    assert drain(broker) == BATCH + 49


def test_stats_window_is_capped(app: runq.App, broker: RedisBroker, client: redis.Redis) -> None:
    app.enqueue_many([runq.Signature("add", (i, i)) for i in range(4200)])
    assert drain(broker) == 4200
    assert client.llen(queue_keys("default").samples) == 4096
    stats = app.stats()
    assert stats.counters["succeeded"] == 4200 and stats.throughput == pytest.approx(4200 / 60)


# -- blocking, not polling ---------------------------------------------------------------


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far (commands run inside scripts count too)."""
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in client.info("commandstats").items()}


def test_result_blocks_on_redis_without_polling(app: runq.App, broker: RedisBroker, client: redis.Redis) -> None:
    handle = app.enqueue("add", args=[1, 2])
    broker.wait(handle.id, 0.001)  # loads the scripts
    before = command_calls(client)
    with pytest.raises(TimeoutError):
        handle.result(timeout=1.0)
    wait_until(lambda: not client.hexists(queue_keys("default").waiters, handle.id))
    after = command_calls(client)
    # One BLPOP, ended by the wake list when the wait gave up; on a loaded machine the shared
    # driver may start one more round before it sees that (polling would be dozens of each).
    rounds = after.get("blpop", 0) - before.get("blpop", 0)
    assert 1 <= rounds <= 2
    assert 2 <= after["fcall"] - before["fcall"] <= 2 * rounds  # per round at most a watch and an unwatch


def test_result_wakes_as_soon_as_the_task_is_settled(app: runq.App, broker: RedisBroker) -> None:
    handle = app.enqueue("add", args=[1, 2])
    [claim] = broker.claim(("default",), "w", 1, 30)
    settled: list[float] = []

    def settle_later() -> None:
        # Four waiters in this process, counted once by Redis: the shared connection fans the token out.
        book = broker._waits._book._awaited
        wait_until(lambda: handle.id in book and len(book[handle.id].waiters) == 4 and book[handle.id].watched)
        assert int(broker._r.hget(queue_keys("default").waiters, handle.id) or 0) == 1
        settled.append(time.monotonic())
        broker.settle([Outcome(claim.id, claim.token, "succeeded", result="3")])

    thread = threading.Thread(target=settle_later)
    thread.start()
    others = [app.handle(handle.id) for _ in range(3)]
    results: list[Any] = []
    waiters = [threading.Thread(target=lambda h=h: results.append(h.result(timeout=20))) for h in others]
    for waiter in waiters:
        waiter.start()
    assert handle.result(timeout=20) == 3
    woke = time.monotonic()
    for waiter in [thread, *waiters]:
        waiter.join()
    assert results == [3, 3, 3]  # every waiter wakes, not just the first
    assert woke - settled[0] < 1.0  # woken by the notification, well before the 5 s blocking slice


def test_wait_for_work_wakes_on_enqueue(app: runq.App, broker: RedisBroker) -> None:
    other = runq.App(app.settings.url)
    ended: list[float] = []

    def idle() -> None:
        broker.wait_for_work(("high", "default"), timeout=10)
        ended.append(time.monotonic())

    thread = threading.Thread(target=idle)
    thread.start()
    try:
        wait_until(lambda: any("blpop" in str(c.get("cmd")) for c in broker._r.client_list()))
        enqueued = time.monotonic()
        other.enqueue("add", args=[1, 2])
        thread.join(timeout=10)
        assert ended and ended[0] - enqueued < 1.0
    finally:
        other.close()


def test_wait_for_work_returns_at_the_due_time(app: runq.App, broker: RedisBroker) -> None:
    enqueued = time.monotonic()
    task_id = app.enqueue("add", args=[1, 2], delay=0.3).id
    broker.wait_for_work(("default",), timeout=10)
    woke = time.monotonic() - enqueued
    [claim] = broker.claim(("default",), "w", 1, 30)
    assert claim.id == task_id
    assert 0.25 <= woke < 0.3 + 0.25  # SPEC: <= 50 ms late; slack for a loaded test machine


# -- configuration -------------------------------------------------------------------------


def test_warns_when_redis_may_evict_tasks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path, "--maxmemory-policy", "allkeys-lru")
    broker = RedisBroker(server.url)
    try:
        with caplog.at_level(logging.WARNING, logger="runq.broker"):
            broker.claim(("default",), "w", 1, 30)
            broker.claim(("default",), "w", 1, 30)
        warnings = [r for r in caplog.records if "allkeys-lru" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        broker.close()
        server.kill()


def test_acl_user_without_config_works_and_no_warning(
    url: str, redis_server: RedisServer, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
        commands=["-config"],
    )
    try:
        app = runq.App(f"redis://limited:pw@127.0.0.1:{redis_server.port}/0")
        with caplog.at_level(logging.DEBUG, logger="runq.broker"):
            handle = app.enqueue("add", args=[1, 2])
            [claim] = app.broker.claim(("default",), "w", 1, 30)
        assert claim.id == handle.id
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        app.close()
    finally:
        client.acl_deluser("limited")


def test_cluster_url_uses_the_cluster_client(redis_server: RedisServer) -> None:
    with pytest.raises(runq.BrokerUnavailable, match="Cluster mode is not enabled"):
        RedisBroker(f"redis+cluster://127.0.0.1:{redis_server.port}")  # a plain server is no cluster


# -- a real worker across a Redis restart --------------------------------------------------


def test_worker_survives_a_redis_restart(tmp_path: Path, start_worker: StartWorker) -> None:
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    app = runq.App(server.url)
    try:
        worker = start_worker(server.url, "--pool", "thread", "--concurrency", "4")
        before = [app.enqueue("add", args=[i, i]) for i in range(20)]
        assert [h.result(timeout=30) for h in before] == [2 * i for i in range(20)]
        server.kill()
        server.start()
        after = [app.enqueue("add", args=[i, 1]) for i in range(20)]
        assert [h.result(timeout=60) for h in after] == [i + 1 for i in range(20)]
        assert worker.proc.poll() is None, worker.output()
    finally:
        app.close()
        server.kill()
