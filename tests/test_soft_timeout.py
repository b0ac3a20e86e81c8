"""``soft_timeout`` (SPEC §9): ``runq.SoftTimeout`` raised inside the running task, in every
pool, by real worker processes; the hard ``timeout`` still ends a task that ignores it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import runq
from runq.settings import POOLS
from runq.worker import soft
from tests.conftest import ROOT, WorkerProcess
from tests.test_dashboard import Dashboard

StartWorker = Callable[..., WorkerProcess]
APP = "tests.soft_tasks:app"
LONG = 20.0  # seconds a task would work without its soft timeout (0.5 s)


def failure(handle: runq.Handle[Any]) -> runq.TaskFailed:
    with pytest.raises(runq.TaskFailed) as raised:
        handle.result(timeout=30)
    return raised.value


@pytest.mark.parametrize("pool", POOLS)
def test_a_soft_timeout_is_raised_inside_the_task_in_every_pool(
    app: runq.App, broker_url: str, start_worker: StartWorker, pool: str
) -> None:
    start_worker(broker_url, "--pool", pool, "--concurrency", "4", app=APP)
    caught = [app.enqueue(name, [LONG]) for name in ("soft.caught", "soft.acaught")]
    uncaught = [app.enqueue(name, [LONG]) for name in ("soft.uncaught", "soft.auncaught")]
    for handle in caught:  # caught: the task cleans up and returns, well before LONG
        result = handle.result(timeout=30)
        assert 0.5 <= result["cleaned_up_after"] < 5, result
        assert handle.info().attempts == 1  # type: ignore[union-attr]
    for handle in uncaught:  # uncaught: a failure, retried like any other (retries=1)
        error = failure(handle)
        assert (error.type, error.message) == ("SoftTimeout", "the task reached its soft_timeout")
        assert handle.info().attempts == 2  # type: ignore[union-attr]
    assert app.enqueue("soft.plain", [0.6]).result(timeout=30) == "finished"  # no soft_timeout: runs on


def test_the_process_pool_interrupts_a_blocking_call(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    """A signal, not a bytecode check: a task asleep in one long C call still sees it."""
    start_worker(broker_url, "--pool", "process", "--concurrency", "1", app=APP)
    result = app.enqueue("soft.blocked", [LONG]).result(timeout=30)
    assert 0.5 <= result["cleaned_up_after"] < 5


@pytest.mark.parametrize("pool", POOLS)
def test_the_hard_timeout_still_ends_a_task_that_swallows_its_soft_timeout(
    app: runq.App, broker_url: str, start_worker: StartWorker, pool: str
) -> None:
    start_worker(broker_url, "--pool", pool, "--concurrency", "1", app=APP)
    error = failure(app.enqueue("soft.stubborn", [LONG]))
    assert error.type == "TimeoutError"
    assert app.enqueue("soft.plain", [0.0]).result(timeout=30) == "finished"  # the slot works on


def test_an_option_given_at_the_call_wins_and_reaches_the_worker(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    start_worker(broker_url, "--pool", "thread", "--concurrency", "1", app=APP)
    handle = app.enqueue("soft.plain", [LONG], soft_timeout=0.3, timeout=30)
    assert failure(handle).type == "SoftTimeout"


# -- the rule: one for Python, the CLI and the HTTP API ----------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"soft_timeout": 5, "timeout": 5}, "soft_timeout (5s) must be less than timeout (5s)"),
        ({"soft_timeout": 0}, "soft_timeout must be > 0 seconds"),
        ({"soft_timeout": -1}, "soft_timeout must be > 0 seconds"),
        ({"soft_timeout": float("nan")}, "soft_timeout must be a finite number"),
    ],
)
def test_python_refuses_a_bad_soft_timeout(options: dict[str, Any], message: str) -> None:
    app = runq.App("memory://")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        app.task(name="t", **options)(lambda: None)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        app.enqueue("t", **options)


def test_the_rule_holds_against_the_task_s_own_timeout() -> None:
    app = runq.App("memory://")

    @app.task(timeout=3)
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"soft_timeout \(3s\) must be less than timeout \(3s\)"):
        job.options(soft_timeout=3).delay()
    with pytest.raises(ValueError, match=r"soft_timeout \(2s\) must be less than timeout \(1s\)"):
        job.options(soft_timeout=2, timeout=1).delay()
    assert job.options(soft_timeout=2.5).delay().info().status == runq.Status.PENDING  # type: ignore[union-attr]
    with pytest.raises(TypeError, match="soft_timeout must be a number of seconds"):
        job.options(soft_timeout="1")


def test_the_cli_and_the_http_api_apply_the_same_rule(sqlite_url: str) -> None:
    def enqueue(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runq", "enqueue", "t", "--url", sqlite_url, *flags],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip

    refused = enqueue("--soft-timeout", "5", "--timeout", "5")
    assert refused.returncode == 2 and "soft_timeout (5s) must be less than timeout (5s)" in refused.stderr
    assert enqueue("--soft-timeout", "0").returncode == 2
    accepted = enqueue("--soft-timeout", "1.5", "--timeout", "5")
    assert accepted.returncode == 0, accepted.stderr

    app = runq.App(sqlite_url)
    dashboard = Dashboard(app)
    client = dashboard.client()
    answer = client.post("/api/tasks", json={"name": "t", "soft_timeout": 5, "timeout": 5})
    assert answer.status_code == 422 and "soft_timeout (5s) must be less than timeout (5s)" in answer.text
    assert client.post("/api/tasks", json={"name": "t", "soft_timeout": -1}).status_code == 422
    assert client.post("/api/tasks", json={"name": "t", "soft_timeout": 1.5, "timeout": 5}).status_code == 202
    client.close()
    dashboard.stop()
    app.close()


# -- the mechanisms, in this process -----------------------------------------------------------


def _spin(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def test_a_thread_s_soft_timeout_never_escapes_the_body_it_was_armed_for() -> None:
    """Bodies shorter, about as long as and longer than their limit: the alarm fires in the
    body, or not at all; one that fires as the body returns is withdrawn, never raised in the
    code after it."""
    results: list[str] = []

    def bodies() -> None:
        escaped = fired = 0
        for index in range(300):
            try:
                try:
                    with soft.limit(0.001):
                        _spin((0.0002, 0.001, 0.0012, 0.02)[index % 4])  # before, about at, after its limit
                except runq.SoftTimeout:
                    fired += 1
                _spin(0.002)  # runq's code after the body: a late alarm would land here
            except runq.SoftTimeout:
                escaped += 1
        results.append(f"escaped={escaped} fired={fired}")

    threads = [threading.Thread(target=bodies) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result.startswith("escaped=0 ") for result in results), results
    assert any(not result.endswith(" fired=0") for result in results), results  # the race was run


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() and asyncio.timeout() are 3.11+")
def test_a_coroutine_sees_soft_timeout_where_it_awaits_and_its_task_is_not_left_cancelled() -> None:
    async def body() -> str:
        try:
            await asyncio.sleep(LONG)
        except runq.SoftTimeout:
            await asyncio.sleep(0.01)  # cleaning up may await: the cancel was consumed
            return "cleaned up"
        return "finished"

    async def main() -> tuple[str, int, str]:
        result = await soft.within(body(), 0.05)
        task = asyncio.current_task()
        assert task is not None
        try:
            async with asyncio.timeout(0.05):  # a hard limit afterwards still works as asyncio's own
                await asyncio.sleep(LONG)
        except TimeoutError:
            hard = "timed out"
        return result, task.cancelling(), hard

    assert asyncio.run(main()) == ("cleaned up", 0, "timed out")


def test_another_cancellation_passes_through_a_soft_limit_unchanged() -> None:
    async def main() -> str:
        task = asyncio.ensure_future(soft.within(asyncio.sleep(LONG), LONG))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert asyncio.run(main()) == "cancelled"
