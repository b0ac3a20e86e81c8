"""Many concurrent result waits (SPEC §8): hundreds of ``result()`` threads or ``aresult()``
coroutines all get their own task's value, none raises, and on Redis they share one waiting
connection per process (per event loop for asyncio): the server sees a handful of clients.

The waits' core (runq/brokers/redis/waits.py ``WaitBook``) does no I/O: its tests drive it by hand.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

import runq
from runq.brokers.redis.keys import done_key, queue_keys, waits_key
from runq.brokers.redis.waits import RECHECK, WaitBook, Waiter
from runq.models import Status
from tests.conftest import WITH_POSTGRES, WorkerProcess, wait_until

BROKER_KINDS = [*WITH_POSTGRES, "redis-cluster"]
StartWorker = Callable[..., WorkerProcess]
MOST_CLIENTS = 8  # the producer's lanes and pool, the one waiting connection, this test's own


def echo_of(app: runq.App) -> runq.Task[Any, Any]:
    def echo(*args: Any, **kwargs: Any) -> Any:
        return {"args": list(args), "kwargs": kwargs}

    return app.task(name="echo")(echo)


def registered(broker_url: str, count: int) -> None:
    """Redis: wait until ``count`` tasks have a registered waiter, then check the clients."""
    if not broker_url.startswith("redis://"):
        return
    with redis.Redis.from_url(broker_url) as client:
        wait_until(lambda: client.hlen(queue_keys("default").waiters) == count, timeout=60)
        clients = client.client_list()
    assert len(clients) <= MOST_CLIENTS, [c.get("name") or c["addr"] for c in clients]


def test_hundreds_of_threads_waiting_share_the_broker(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    echo = echo_of(app)
    handles = [echo.delay(i) for i in range(200)]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def wait(i: int) -> None:
        try:
            results[i] = handles[i].result(timeout=120)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(handles))]
    for thread in threads:
        thread.start()
    try:
        registered(broker_url, len(handles))
    finally:
        start_worker(broker_url, "--pool", "thread", "--concurrency", "8")
        for thread in threads:
            thread.join(150)
    assert errors == []
    assert results == {i: {"args": [i], "kwargs": {}} for i in range(len(handles))}


def test_hundreds_of_coroutines_waiting_share_the_broker(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    echo = echo_of(app)
    handles = [echo.delay(i) for i in range(300)]
    outcome: list[list[Any]] = []

    async def main() -> None:
        try:
            outcome.append(await asyncio.gather(*(h.aresult(timeout=120) for h in handles), return_exceptions=True))
        finally:
            await app.aclose()

    loop = threading.Thread(target=asyncio.run, args=(main(),))
    loop.start()
    try:
        registered(broker_url, len(handles))
    finally:
        start_worker(broker_url, "--pool", "thread", "--concurrency", "8")
        loop.join(150)
    [results] = outcome
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [{"args": [i], "kwargs": {}} for i in range(len(handles))]


def test_a_result_wait_that_times_out_stops_being_counted(app: runq.App, broker_url: str) -> None:
    """The shared connection unwatches a task nobody waits for any more (within a slice)."""
    if not broker_url.startswith("redis://"):
        pytest.skip("one Redis only: the waiters hash")
    handle = echo_of(app).delay(1)
    with pytest.raises(TimeoutError, match="still pending"):
        handle.result(timeout=0.3)
    with redis.Redis.from_url(broker_url) as client:
        wait_until(lambda: client.hlen(queue_keys("default").waiters) == 0, timeout=15)
    assert handle.status() is Status.PENDING


# -- the core, by hand ------------------------------------------------------------------------

ID = {f"{q}.{n}": f"{q}.{n * 32}" for q, n in [("q", "a"), ("q", "b"), ("q", "c"), ("a", "1"), ("b", "1")]}
TOKEN_RECORD = {"status": "succeeded", "attempts": 1, "result": "3", "enqueued_at": 1.0}


def found(status: str) -> list[str]:
    """watch.lua's answer (and, JSON-encoded, a done token): the record, then the payload."""
    return [json.dumps({**TOKEN_RECORD, "status": status}), '{"name": "add"}']


def test_book_registers_a_task_once_and_fans_its_token_out() -> None:
    book = WaitBook(cluster=False)
    first, second, other = Waiter(ID["q.a"]), Waiter(ID["q.a"]), Waiter(ID["q.b"])
    assert book.add(first) is None  # nothing in flight: the driver is told locally
    plan = book.next_round(now=0.0)
    assert plan is not None
    assert [(s.task_id, s.call.name, s.registers) for s in plan.steps] == [(ID["q.a"], "watch", True)]
    assert plan.keys == [waits_key(book.hub, None), done_key(ID["q.a"])]
    assert book.add(second) is None  # its registration is on its way: no wake
    assert book.add(other) == waits_key(book.hub, None)  # a new task while the BLPOP blocks: wake it
    assert book.add(Waiter(ID["q.c"])) is None  # once per round
    book.on_step(plan.steps[0], found("running"))
    assert first.seen and first.last is not None and first.last.status is Status.RUNNING
    book.on_pop([done_key(ID["q.a"]).encode(), json.dumps(found("succeeded")).encode()])
    assert first.done and second.done and not other.done
    assert first.answer() is not None and first.answer() == second.answer()
    plan = book.next_round(now=1.0)
    assert plan is not None and {s.task_id for s in plan.steps} == {ID["q.b"], ID["q.c"]}


def test_book_unwatches_a_task_its_last_waiter_left_and_rechecks_quiet_ones() -> None:
    book = WaitBook(cluster=False)
    gone, staying = Waiter(ID["q.a"]), Waiter(ID["q.b"])
    book.add(gone)
    book.add(staying)
    plan = book.next_round(now=0.0)
    assert plan is not None
    for step in plan.steps:
        book.on_step(step, found("pending"))
    book.on_pop(None)
    book.drop(gone)
    plan = book.next_round(now=1.0)
    assert plan is not None
    assert [(s.task_id, s.call.name) for s in plan.steps] == [(ID["q.a"], "unwatch")]
    assert plan.keys == [waits_key(book.hub, None), done_key(ID["q.b"])]
    book.on_pop(None)
    plan = book.next_round(now=1.0 + RECHECK)  # not heard of for a while: read again, not registered again
    assert plan is not None
    assert [(s.task_id, s.call.name, s.registers) for s in plan.steps] == [(ID["q.b"], "watch", False)]
    book.on_step(plan.steps[0], None)  # purged meanwhile: the wait ends (TaskNotFound)
    assert staying.done and staying.answer() is None
    book.on_pop(None)
    assert book.next_round(now=2.0 + RECHECK) is None  # nothing left: the driver may idle


def test_book_on_a_cluster_blocks_on_one_slot_at_a_time() -> None:
    book = WaitBook(cluster=True)
    book.add(Waiter(ID["a.1"]))
    book.add(Waiter(ID["b.1"]))
    slots = []
    for now in (0.0, 0.1):
        plan = book.next_round(now)
        assert plan is not None and plan.block < 1
        slots.append(plan.keys)
        book.on_pop(None)
    assert sorted(slots) == [
        [waits_key(book.hub, "a"), done_key(ID["a.1"])],
        [waits_key(book.hub, "b"), done_key(ID["b.1"])],
    ]


def test_book_failure_reaches_every_waiter() -> None:
    book = WaitBook(cluster=False)
    waiters = [Waiter(ID["q.a"]), Waiter(ID["q.a"]), Waiter(ID["q.b"])]
    for waiter in waiters:
        book.add(waiter)
    book.next_round(now=0.0)
    book.fail(runq.BrokerUnavailable("down"))
    for waiter in waiters:
        with pytest.raises(runq.BrokerUnavailable):
            waiter.answer()
    assert book.next_round(now=1.0) is None


def test_a_pool_limit_is_not_an_outage() -> None:
    """redis-py's "Too many connections" is a client-side limit: never ``BrokerUnavailable``."""
    from runq.brokers.redis.connection import unavailable

    limit = redis.ConnectionError("Too many connections")
    assert unavailable("redis://:pw@h/0", limit) is limit
    refused = unavailable("redis://:pw@h/0", redis.ConnectionError("Connection refused"))
    assert isinstance(refused, runq.BrokerUnavailable) and "pw" not in str(refused)
