"""``memory://`` and ``app.drain()`` (SPEC §12): tasks tested with no server, no worker, no sleep.

The broker's own rules are the conformance suites' (they run on memory:// too); this file
tests what only an in-process broker offers: draining in the calling thread, a clock that
jumps to the next eta, and crashes on demand that prove a task idempotent.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import runq
from runq.brokers.memory import MemoryBroker
from runq.context import TaskContext
from runq.models import Status
from tests.conftest import ROOT

Memory = "memory://"


@pytest.fixture
def app() -> Iterator[runq.App]:
    application = runq.App(Memory)
    yield application
    application.close()


def drained(succeeded: int = 0, failed: int = 0, retried: int = 0, cancelled: int = 0) -> runq.DrainResult:
    return runq.DrainResult(succeeded=succeeded, failed=failed, retried=retried, cancelled=cancelled)


# -- the broker ---------------------------------------------------------------------------


def test_each_app_gets_a_broker_of_its_own() -> None:
    first, second = runq.App(Memory), runq.App(Memory)
    first.enqueue("noop")
    assert isinstance(first.broker, MemoryBroker) and first.broker is not second.broker
    assert len(first.list()) == 1 and second.list() == []


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("memory://shared", "not a memory URL"),
        ("memory:///path", "not a memory URL"),
        ("memory://?redeliver=1.5", "in [0, 1]"),
        ("memory://?redeliver=nan", "in [0, 1]"),
        ("memory://?redeliver=lots", "a number"),
        ("memory://?seed=x", "an integer"),
        ("memory://?redelivery=0.2", "unknown memory:// option"),
    ],
)
def test_bad_memory_urls_are_refused(url: str, needle: str) -> None:
    with pytest.raises(ValueError, match=f"{needle.replace('[', '.').replace(']', '.')}"):
        runq.App(url).broker  # noqa: B018 - connecting parses the URL


def test_the_clock_only_moves_forward(app: runq.App) -> None:
    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    handle = app.enqueue("noop", delay=3600)
    assert broker.claim(("default",), "w", 1, 30) == []
    broker.advance(3600)
    [claim] = broker.claim(("default",), "w", 1, 30)
    assert claim.id == handle.id
    with pytest.raises(ValueError, match="forward"):
        broker.advance(-1)


# -- drain ----------------------------------------------------------------------------------


def test_drain_runs_a_mix_and_counts_exactly(app: runq.App) -> None:
    ran: Counter[str] = Counter()

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    async def aadd(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    @app.task(retries=2, backoff=0.01, jitter=False)
    def broken() -> None:
        ran["broken"] += 1
        raise ValueError("always")

    @app.task
    def later() -> str:
        ran["later"] += 1
        if runq.current().attempt == 1:
            raise runq.Retry(delay=30)
        return "second time"

    plain, coroutine = add.delay(1, 2), aadd.delay(3, 4)
    chained = runq.chain(add.s(1, 2), aadd.s(10), add.s(100)).delay()
    chord = runq.chord(runq.group(add.s(i, i) for i in range(3)), total.s()).delay()
    doomed = broken.delay()
    report = add.options(after=[plain, coroutine]).delay(0, 0)
    orphan = add.options(after=[doomed]).delay(0, 0)
    retried = later.delay()

    # Ready now: plain, coroutine, 3 chain steps, 3 chord members + callback, report; the first
    # runs of `broken` and `later`, whose retries wait for their back-offs.
    assert app.drain() == drained(succeeded=10, retried=2)
    assert (plain.result(timeout=0), coroutine.result(timeout=0), chained.result(timeout=0)) == (3, 7, 113)
    assert (chord.result(timeout=0), report.result(timeout=0)) == (6, 0)
    assert (doomed.status(), orphan.status(), retried.status()) == (Status.SCHEDULED, Status.WAITING, Status.SCHEDULED)

    # scheduled=True: the back-offs at once; broken fails for good and cancels its dependent.
    assert app.drain(scheduled=True) == drained(succeeded=1, failed=1, retried=1, cancelled=1)
    assert ran == {"broken": 3, "later": 2}
    assert retried.result(timeout=0) == "second time"
    with pytest.raises(runq.TaskFailed, match="always"):
        doomed.result(timeout=0)
    with pytest.raises(runq.TaskCancelled, match=doomed.id):
        orphan.result(timeout=0)
    assert app.drain(scheduled=True) == drained()


def test_scheduled_tasks_run_in_eta_order_on_a_clock_that_jumps(app: runq.App) -> None:
    order: list[str] = []

    @app.task
    def mark(name: str) -> None:
        order.append(name)
        if name == "first":  # enqueued at +10 s for +5 s: due at +15 s, before "third" (+20 s)
            mark.options(delay=5).delay("spawned")

    broker = app.broker
    assert isinstance(broker, MemoryBroker)
    start = broker.now()
    mark.options(delay=30).delay("last")
    mark.options(delay=10).delay("first")
    mark.options(delay=20, priority=100).delay("third")  # priority orders ready tasks, not etas
    mark.delay("now")
    assert app.drain() == drained(succeeded=1)
    assert order == ["now"]
    assert app.drain(scheduled=True) == drained(succeeded=4)
    assert order == ["now", "first", "spawned", "third", "last"]
    assert 30 <= broker.now() - start < 31  # the clock moved to the last eta, no further


def test_drain_only_the_queues_asked_for(app: runq.App) -> None:
    @app.task
    def noop() -> None:
        return None

    mine, theirs = noop.options(queue="mine").delay(), noop.options(queue="theirs").delay()
    assert app.drain("mine") == drained(succeeded=1)
    assert (mine.status(), theirs.status()) == (Status.SUCCEEDED, Status.PENDING)
    with pytest.raises(ValueError, match="queue name"):
        app.drain(["no spaces"])


def test_a_held_task_waits_for_its_rate_limit_on_the_broker_clock(app: runq.App) -> None:
    @app.task(rate_limit="1/m")
    def call_api(n: int) -> int:
        return n

    handles = [call_api.delay(n) for n in range(3)]
    assert app.drain() == drained(succeeded=1)  # the other two are held (scheduled), not failed
    assert [h.status() for h in handles].count(Status.SCHEDULED) == 2
    assert app.drain(scheduled=True) == drained(succeeded=2)
    assert [h.result(timeout=0) for h in handles] == [0, 1, 2]
    assert all(info.attempts == 1 for info in app.list("succeeded"))  # a hold uses no attempt


def test_an_open_breaker_holds_runs_until_the_clock_reaches_its_probe(app: runq.App) -> None:
    calls: list[int] = []

    @app.task(breaker=(1, 60), retries=0)
    def fragile(n: int) -> int:
        calls.append(n)
        if n == 0:
            raise ConnectionError("down")
        return n

    first = fragile.delay(0)
    second = fragile.delay(1)
    assert app.drain() == drained(failed=1)  # the failure opens the breaker: the second is held
    assert (first.status(), second.status(), calls) == (Status.FAILED, Status.SCHEDULED, [0])
    assert app.stats().breakers[fragile.name]["state"] == "open"
    assert app.drain(scheduled=True) == drained(succeeded=1)  # 60 s later on the broker's clock: the probe
    assert second.result(timeout=0) == 1 and calls == [0, 1]
    assert app.stats().breakers[fragile.name]["state"] == "closed"


def test_drain_from_inside_a_running_event_loop(app: runq.App) -> None:
    @app.task
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def an_async_test() -> int:
        handle = await double.adelay(21)
        assert app.drain() == drained(succeeded=1)
        return await handle.aresult(timeout=5)

    assert asyncio.run(an_async_test()) == 42


def test_unknown_tasks_and_malformed_arguments_fail_as_at_a_worker(app: runq.App) -> None:
    unknown = app.enqueue("nobody.has.this")
    assert app.drain() == drained(failed=1)
    info = unknown.info()
    assert info is not None and info.error is not None and info.error["type"] == "UnknownTask"


def test_drain_works_on_another_broker_without_scheduled(sqlite_url: str) -> None:
    app = runq.App(sqlite_url)
    try:

        @app.task
        def add(a: int, b: int) -> int:
            return a + b

        handle = add.delay(2, 3)
        assert app.drain() == drained(succeeded=1)
        assert handle.result(timeout=0) == 5
        with pytest.raises(ValueError, match="only memory:// can"):
            app.drain(scheduled=True)
    finally:
        app.close()


# -- middleware -------------------------------------------------------------------------------


class Recorder(runq.Middleware):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    def on_start(self, task: TaskContext) -> None:
        assert runq.current().id == task.id
        task.notes["seen"] = "yes"
        self.events.append(("start", task.name, task.attempt))

    def on_end(self, task: TaskContext, error: BaseException | None) -> None:
        self.events.append(("end", task.name, type(error).__name__ if error else None))

    def on_finish(self, task: TaskContext, outcome: runq.TaskOutcome) -> None:
        self.events.append(("finish", task.name, (outcome.status, outcome.result, dict(task.notes))))


def test_middleware_hooks_fire_during_drain(app: runq.App) -> None:
    recorder = Recorder()
    app.add_middleware(recorder)

    @app.task(name="ok")
    async def ok() -> str:
        return "fine"

    @app.task(name="bad", retries=1, backoff=0.01)
    def bad() -> None:
        raise KeyError("x")

    ok.delay()
    bad.delay()
    assert app.drain(scheduled=True) == drained(succeeded=1, failed=1, retried=1)
    assert recorder.events == [
        ("start", "ok", 1),
        ("end", "ok", None),
        ("finish", "ok", ("succeeded", "fine", {"seen": "yes"})),
        ("start", "bad", 1),
        ("end", "bad", "KeyError"),
        ("finish", "bad", ("retrying", None, {"seen": "yes"})),
        ("start", "bad", 2),
        ("end", "bad", "KeyError"),
        ("finish", "bad", ("failed", None, {"seen": "yes"})),
    ]


# -- redelivery: proving a task idempotent ------------------------------------------------------


def shop(url: str) -> tuple[runq.App, dict[str, list[str]]]:
    """An App with a careless and a careful way to charge an order, and the ledger they write."""
    app = runq.App(url)
    ledger: dict[str, list[str]] = {"careless": [], "careful": []}

    @app.task(name="charge_carelessly")
    def charge_carelessly(order: str) -> None:
        ledger["careless"].append(order)

    @app.task(name="charge_carefully")
    def charge_carefully(order: str) -> None:
        if order not in ledger["careful"]:  # the idempotency check a crash makes necessary
            ledger["careful"].append(order)

    return app, ledger


def charged_once(ledger: list[str], orders: list[str]) -> bool:
    return sorted(ledger) == sorted(orders)


def test_redelivery_catches_a_task_that_is_not_idempotent() -> None:
    app, ledger = shop("memory://?redeliver=1")
    orders = [f"order-{n}" for n in range(5)]
    for order in orders:
        app.enqueue("charge_carelessly", args=[order])
        app.enqueue("charge_carefully", args=[order])
    # Every attempt is lost once after it ran (its settle rejected) and delivered again.
    assert app.drain() == drained(succeeded=10, retried=10)
    assert not charged_once(ledger["careless"], orders)  # the check a user's test makes: it fails here
    assert Counter(ledger["careless"]) == dict.fromkeys(orders, 2)
    assert charged_once(ledger["careful"], orders)
    infos = app.list("succeeded", limit=100)
    assert {info.attempts for info in infos} == {2}
    assert all(info.error is None for info in infos)


def test_without_redelivery_the_careless_task_looks_fine() -> None:
    app, ledger = shop(Memory)
    app.enqueue("charge_carelessly", args=["order-1"])
    assert app.drain() == drained(succeeded=1)
    assert ledger["careless"] == ["order-1"]  # which is why a test needs ?redeliver


def test_redelivery_is_seeded_and_reproducible() -> None:
    def lost(url: str) -> list[int]:
        app, _ = shop(url)
        handles = [app.enqueue("charge_carefully", args=[f"o-{n}"]) for n in range(40)]
        result = app.drain()
        attempts = [info.attempts for h in handles if (info := h.info()) is not None]
        assert result == drained(succeeded=40, retried=sum(a - 1 for a in attempts))
        return attempts

    first = lost("memory://?redeliver=0.2&seed=7")
    assert first == lost("memory://?redeliver=0.2&seed=7")
    assert set(first) == {1, 2} and 2 <= first.count(2) <= 20  # some lost, each at most once
    assert first != lost("memory://?redeliver=0.2&seed=8")


def test_a_redelivered_attempt_counts_as_a_crash_would() -> None:
    """A task allowed no retries is not run a second time after a lost attempt: the worker's
    poison-pill rule fails it (WorkerLost), as it would after a real crash."""
    app = runq.App("memory://?redeliver=1")
    runs: list[int] = []

    @app.task(retries=0)
    def once() -> None:
        runs.append(runq.current().attempt)

    handle = once.delay()
    assert app.drain() == drained(failed=1, retried=1)
    assert runs == [1]
    with pytest.raises(runq.TaskFailed, match="lost attempts"):
        handle.result(timeout=0)


# -- runq worker ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["app", "url"])
def test_runq_worker_refuses_memory(how: str, tmp_path: Path) -> None:
    (tmp_path / "memapp.py").write_text('import runq\napp = runq.App("memory://")\n')
    (tmp_path / "diskapp.py").write_text("import runq\napp = runq.App()\n")
    args = ["memapp:app"] if how == "app" else ["diskapp:app", "--url", "memory://?seed=1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "runq", "worker", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "memory:// lives inside one process" in done.stderr and "app.drain()" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runq.db").exists()  # refused before connecting anywhere
