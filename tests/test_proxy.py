"""Faults on the wire (issue 23 part 2): workers and producers reach a private Redis and a
private PostgreSQL database through a TCP proxy (tests/support/proxy.py) that cuts
connections, cuts them mid-call, and black-holes them past the lease.

What must hold: nothing acknowledged is lost (every handle a producer got ends with its own
result), no reply reaches the wrong caller (``result()`` never returns another task's value),
no worker hangs (each one works on after the faults and exits 0 on SIGTERM), and only an
enqueue that *raised* may have been stored anyway (so only an un-keyed retry can double a task).

``RUNQ_PROXY_TRIPS`` sets the round trips of the random-cut test (default 3,000 on Redis, 2,000
on Valkey and PostgreSQL: ~25 s and ~10 s each here); the longer run is in README's "Reliability".
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

import runq
from runq.errors import BrokerUnavailable
from tests.conftest import WorkerProcess, wait_until
from tests.support.proxy import Proxy
from tests.support.servers import RedisServer

StartWorker = Callable[..., WorkerProcess]
PRODUCERS = 8
CHAOS = 0.001  # chance that a relayed chunk is cut instead, each way


@dataclass
class Wire:
    """One broker, reached directly (``url``) and through a proxy for workers and one for producers."""

    kind: str
    url: str
    workers: Proxy
    producers: Proxy

    def through(self, proxy: Proxy) -> str:
        parts = urlsplit(self.url)
        netloc = parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{proxy.port}"))

    @property
    def worker_url(self) -> str:
        return self.through(self.workers)

    @property
    def producer_url(self) -> str:
        return self.through(self.producers)


@pytest.fixture(params=["redis", "valkey", "postgres"])
def wire(request: pytest.FixtureRequest) -> Iterator[Wire]:
    if request.param in ("redis", "valkey"):
        server: RedisServer = request.getfixturevalue(f"{request.param}_server")
        server.flush()
        url = server.url
    else:
        import secrets

        database: str = request.getfixturevalue("postgres_database")
        url = f"{database}?schema=t_{secrets.token_hex(6)}"
    upstream = urlsplit(url)
    address = (upstream.hostname or "127.0.0.1", upstream.port or 5432)
    workers, producers = Proxy(address, seed=1), Proxy(address, seed=2)
    yield Wire(request.param, url, workers, producers)
    workers.close()
    producers.close()


def retrying(call: Callable[[], object], raised: Counter[str], what: str) -> object:
    """A caller's loop: a call cut mid-way raises BrokerUnavailable and is made again."""
    while True:
        try:
            return call()
        except BrokerUnavailable:
            raised[what] += 1


def stopped_cleanly(worker: WorkerProcess) -> None:
    assert worker.proc.poll() is None, f"the worker died:\n{worker.output()[-3000:]}"
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, worker.output()[-3000:]


def test_round_trips_through_random_cuts(wire: Wire, start_worker: StartWorker) -> None:
    """Every chunk, either way, on the workers' and the producers' connections, has a 0.1%
    chance of being cut instead of relayed: enqueues, claims, settles, renewals and blocking
    waits are cut mid-call, hundreds of times."""
    trips = int(os.environ.get("RUNQ_PROXY_TRIPS", "3000" if wire.kind == "redis" else "2000"))  # CI time
    worker_args = ("--pool", "thread", "--concurrency", "8", "--lease", "2", "--queues", "keyed,plain")
    worker = start_worker(wire.worker_url, *worker_args)
    app = runq.App(wire.producer_url)
    wait_until(lambda: app.workers(), timeout=30)
    raised: Counter[str] = Counter()
    ids: dict[int, str] = {}
    wrong: list[tuple[int, object]] = []
    for proxy in (wire.workers, wire.producers):
        proxy.chaos(request=CHAOS, reply=CHAOS)

    def trip(i: int) -> None:
        plain = i % 4 == 0  # a quarter without an idempotency key: their retries may double them
        options = {"queue": "plain"} if plain else {"queue": "keyed", "key": f"trip-{i}"}
        handle = retrying(lambda: app.enqueue("add", [i, i], **options), raised, "plain" if plain else "keyed")
        assert isinstance(handle, runq.Handle)
        ids[i] = handle.id
        value = retrying(lambda: handle.result(timeout=120), raised, "result")
        if value != 2 * i:
            wrong.append((i, value))

    def producer(first: int) -> None:
        for i in range(first, trips, PRODUCERS):
            trip(i)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for proxy in (wire.workers, wire.producers):
        proxy.chaos()
    assert wrong == [], "a result reached the wrong caller"
    assert len(ids) == trips and len(set(ids.values())) == trips  # every trip got a handle of its own
    cuts = wire.workers.counts.cuts + wire.producers.counts.cuts
    assert wire.workers.counts.cuts > 0 and wire.producers.counts.reply_cuts > 0, (wire.workers.counts, raised)
    queues = app.stats().queues
    keyed, plain = queues["keyed"], queues["plain"]
    plain_trips = len(range(0, trips, 4))
    assert keyed.succeeded == trips - plain_trips  # one task per key, however often its enqueue raised
    doubled = plain.succeeded - plain_trips
    assert 0 <= doubled <= raised["plain"], (doubled, raised)  # only an enqueue that raised was doubled
    for stats in (keyed, plain):
        assert (stats.pending, stats.scheduled, stats.running, stats.failed) == (0, 0, 0, 0)
    print(f"\n{wire.kind}: {trips} round trips, {cuts} cuts, raised {dict(raised)}, {doubled} doubled")
    stopped_cleanly(worker)
    app.close()


def test_a_stall_past_the_lease_hands_the_task_over_and_the_worker_goes_on(
    wire: Wire, start_worker: StartWorker, tmp_path: Path
) -> None:
    """The worker's traffic is black-holed (connections open, nothing relayed) while it runs a
    task, past its lease: another worker takes the task over; the stalled worker's late
    outcome is refused (fencing), and once the wire works again it runs new tasks."""
    app = runq.App(wire.url)
    mark = tmp_path / "started"
    handle = app.enqueue("pid_after", [str(mark), 1.0], retries=2)
    stalled = start_worker(wire.worker_url, "--pool", "thread", "--concurrency", "2", "--lease", "2")
    wait_until(mark.exists, timeout=30)
    wire.workers.stall()
    other = start_worker(wire.url, "--pool", "thread", "--lease", "2")
    assert handle.result(timeout=60) == other.pid  # the taken-over attempt's result, not the stalled one's
    info = handle.info()
    assert info is not None and info.attempts == 2
    stopped_cleanly(other)
    wire.workers.resume()
    assert [app.enqueue("add", [i, i]).result(timeout=60) for i in range(5)] == [0, 2, 4, 6, 8]
    wait_until(lambda: "late outcome rejected" in stalled.output(), timeout=30)
    assert handle.result(timeout=1) == other.pid  # still: the late outcome changed nothing
    stopped_cleanly(stalled)
    app.close()


def test_cut_during_blocking_waits(wire: Wire, start_worker: StartWorker) -> None:
    """Every connection is reset while the producer waits on a result and the idle worker
    waits for work: both come back on their own (result() waits again after the cut, never
    raising while the broker is up)."""
    app = runq.App(wire.producer_url)
    worker = start_worker(wire.worker_url, "--pool", "thread")
    wait_until(lambda: app.workers(), timeout=30)
    handle = app.enqueue("add", [20, 1], delay=1.5)  # nobody can run it yet: result() blocks
    outcome: list[object] = []
    raised: Counter[str] = Counter()
    waiter = threading.Thread(target=lambda: outcome.append(retrying(lambda: handle.result(30), raised, "result")))
    relayed = wire.producers.counts.relayed
    waiter.start()
    wait_until(lambda: wire.producers.counts.relayed >= relayed + 2)  # its wait is on the wire
    wire.workers.cut()
    wire.producers.cut()
    waiter.join(60)
    assert outcome == [21]
    assert raised["result"] == 0  # a cut wait is waited again (SPEC §8)
    assert app.enqueue("add", [1, 1]).result(timeout=30) == 2  # the worker claims after the cut
    stopped_cleanly(worker)
    app.close()


# -- cuts aimed at one call (Redis: the FCALL names the function) --------------------


def test_an_enqueue_whose_reply_is_cut_is_stored_and_its_key_makes_the_retry_safe(
    redis_server: RedisServer, start_worker: StartWorker
) -> None:
    redis_server.flush()
    with Proxy(("127.0.0.1", redis_server.port)) as proxy:
        app = runq.App(f"redis://127.0.0.1:{proxy.port}/0")
        app.enqueue("add", [0, 0], key="warm-up")  # connected, functions loaded
        proxy.cut_next(b"\r\nrunq_enqueue_")
        with pytest.raises(BrokerUnavailable):
            app.enqueue("add", [1, 1])  # stored, but the caller cannot know
        assert proxy.fired.wait(10)
        assert app.stats().queues["default"].pending == 2  # so a blind retry would double it
        proxy.cut_next(b"\r\nrunq_enqueue_")
        with pytest.raises(BrokerUnavailable):
            app.enqueue("add", [2, 2], key="invoice-42")
        again = app.enqueue("add", [2, 2], key="invoice-42")  # the retry finds the first task
        assert app.stats().queues["default"].pending == 3
        start_worker(redis_server.url, "--pool", "thread")
        assert again.result(timeout=30) == 4
        app.close()


@pytest.mark.parametrize("reply", [True, False], ids=["reply-cut", "request-cut"])
@pytest.mark.parametrize("call", ["claim", "settle", "renew"])
def test_a_worker_call_cut_mid_way_loses_nothing_and_runs_once_at_most_twice(
    redis_server: RedisServer, start_worker: StartWorker, tmp_path: Path, call: str, reply: bool
) -> None:
    """A cut claim reply leaves the task claimed by nobody who knows: it runs again after the
    lease (attempt 2). A cut settle is sent again; the second is refused as the task is final,
    and the first (reply cut) or the second (request cut) recorded it: it ran once."""
    redis_server.flush()
    with Proxy(("127.0.0.1", redis_server.port)) as proxy:
        app = runq.App(redis_server.url)
        handle = app.enqueue("sleep", [1.2 if call == "renew" else 0.0])
        proxy.cut_next(f"\r\nrunq_{call}_".encode(), reply=reply)
        worker = start_worker(f"redis://127.0.0.1:{proxy.port}/0", "--pool", "thread", "--lease", "2")
        assert handle.result(timeout=60) == (1.2 if call == "renew" else 0.0)
        assert proxy.fired.wait(10)
        info = handle.info()
        assert info is not None
        assert info.attempts == (2 if call == "claim" and reply else 1), worker.output()[-2000:]
        assert app.enqueue("add", [2, 3]).result(timeout=30) == 5  # and the worker goes on
        stopped_cleanly(worker)
        app.close()
