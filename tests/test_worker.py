"""Real worker processes (``runq worker tests.tasks:app``), killed for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import runq
from runq.cli import main
from runq.models import Status, WorkerInfo
from tests.conftest import EVERY_BROKER, WorkerProcess, corrupt_payload, wait_until

BROKER_KINDS = EVERY_BROKER  # the worker's semantics, proven on every broker

StartWorker = Callable[..., WorkerProcess]
POOLS = ["process", "thread", "async"]


def final(app: runq.App, task_id: str, timeout: float = 30) -> runq.TaskInfo:
    info = app.broker.wait(task_id, timeout)
    assert info is not None and info.status.final, info
    return info


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile (reading /proc can say ESRCH)
        return False


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in out.split()]


@pytest.mark.parametrize("pool", POOLS)
def test_every_pool_runs_tasks_with_their_policy(
    app: runq.App, broker_url: str, start_worker: StartWorker, pool: str
) -> None:
    worker = start_worker(broker_url, "--pool", pool, "--concurrency", "4")
    assert app.enqueue("add", args=[2, 3]).result(timeout=30) == 5
    assert app.enqueue("async_sleep", args=[0.01]).result(timeout=30) == 0.01
    ctx = app.enqueue("context")
    assert ctx.result(timeout=30) == {"id": ctx.id, "name": "context", "attempt": 1}
    assert app.enqueue("flaky", args=[3]).result(timeout=30) == 3
    assert app.enqueue("ask_retry").result(timeout=30) == 2

    retried = app.enqueue("picky", args=["io"])
    with pytest.raises(runq.TaskFailed) as io_error:
        retried.result(timeout=30)
    assert io_error.value.type == "OSError"
    assert "Traceback" in (io_error.value.traceback or "")
    info = retried.info()
    assert info is not None and info.attempts == 4  # 1 + 3 retries

    not_retried = app.enqueue("picky", args=["value"])
    with pytest.raises(runq.TaskFailed, match="ValueError"):
        not_retried.result(timeout=30)
    info = not_retried.info()
    assert info is not None and info.attempts == 1

    with pytest.raises(runq.TaskFailed) as bad:
        app.enqueue("bad_result").result(timeout=30)
    assert bad.value.type == "TypeError"

    unknown = app.enqueue("no.such.task")
    with pytest.raises(runq.TaskFailed) as missing:
        unknown.result(timeout=30)
    assert missing.value.type == "UnknownTask"
    info = unknown.info()
    assert info is not None and info.attempts == 1
    assert app.retry(unknown.id)  # retryable later, e.g. after a deploy

    handles = app.enqueue_many([runq.Signature("add", (i, 1)) for i in range(100)])
    assert [h.result(timeout=60) for h in handles] == [i + 1 for i in range(100)]
    assert worker.proc.poll() is None


@pytest.mark.parametrize("pool", POOLS)
def test_hard_timeout_fails_the_attempt_and_the_worker_goes_on(
    app: runq.App, broker_url: str, start_worker: StartWorker, pool: str
) -> None:
    start_worker(broker_url, "--pool", pool, "--concurrency", "1")
    name = "async_sleep" if pool == "async" else "sleep"
    slow = app.enqueue(name, args=[30], timeout=0.5, retries=0)
    with pytest.raises(runq.TaskFailed) as failure:
        slow.result(timeout=30)
    assert failure.value.type == "TimeoutError"
    assert app.enqueue("add", args=[1, 1]).result(timeout=30) == 2  # the slot was replaced


@pytest.mark.parametrize("pool", POOLS)
def test_cancel_stops_a_running_task(
    app: runq.App, broker_url: str, start_worker: StartWorker, pool: str, tmp_path: Path
) -> None:
    start_worker(broker_url, "--pool", pool, "--concurrency", "1")
    marker = tmp_path / "started"
    handle = app.enqueue("touch_then_sleep", args=[str(marker), 60])
    wait_until(marker.exists, timeout=30)
    assert handle.cancel()
    assert handle.status() is Status.CANCELLED
    if pool == "process":
        child = int(wait_until(marker.read_text))
        wait_until(lambda: not alive(child), timeout=5)
    with pytest.raises(runq.TaskCancelled):
        handle.result(timeout=1)
    # the only slot is free again within the cancel deadline (thread: cooperative stop)
    assert app.enqueue("add", args=[2, 2]).result(timeout=30) == 4
    assert handle.status() is Status.CANCELLED


def test_sigterm_lets_the_running_task_finish(
    app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker(broker_url, "--concurrency", "1")
    marker = tmp_path / "started"
    handle = app.enqueue("touch_then_sleep", args=[str(marker), 1.0])
    waiting = app.enqueue("add", args=[1, 1])
    wait_until(marker.exists, timeout=30)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert handle.result(timeout=1) == "finished"
    assert waiting.status() is Status.PENDING  # never claimed once shutdown began


def test_second_signal_returns_the_running_task(
    app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    worker = start_worker(broker_url, "--concurrency", "1")
    marker = tmp_path / "started"
    handle = app.enqueue("touch_then_sleep", args=[str(marker), 60])
    wait_until(marker.exists, timeout=30)
    worker.signal(signal.SIGTERM)
    wait_until(lambda: "again to stop now" in worker.output(), timeout=10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    info = handle.info()
    assert info is not None and info.status is Status.PENDING
    start_worker(broker_url, "--concurrency", "1")
    marker.unlink()
    wait_until(marker.exists, timeout=30)  # it runs again elsewhere


def test_grace_period_runs_out(app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path) -> None:
    worker = start_worker(broker_url, "--concurrency", "1", "--grace", "0.5")
    marker = tmp_path / "started"
    handle = app.enqueue("touch_then_sleep", args=[str(marker), 60])
    wait_until(marker.exists, timeout=30)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert handle.status() is Status.PENDING


def test_kill_9_mid_run_loses_nothing(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    handles = app.enqueue_many([runq.Signature("sleep", (0.005,)) for _ in range(500)])
    worker = start_worker(broker_url, "--pool", "process", "--concurrency", "2", "--lease", "1")
    wait_until(lambda: app.stats().queues["default"].succeeded >= 50, timeout=60)
    children = children_of(worker.pid)
    assert children, "the process pool has children"
    worker.proc.kill()
    worker.proc.wait()
    for child in children:  # no orphans: children die with their parent
        wait_until(lambda child=child: not alive(child), timeout=10)
    assert app.stats().queues["default"].succeeded < 500, "killed mid-run"
    start_worker(broker_url, "--pool", "process", "--concurrency", "2", "--lease", "1")
    for handle in handles:
        assert handle.result(timeout=120) == 0.005
    stats = app.stats().queues["default"]
    assert (stats.succeeded, stats.pending, stats.running, stats.failed) == (500, 0, 0, 0)


def test_paused_worker_cannot_overwrite_the_newer_attempt(
    app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    handle = app.enqueue("pid_after", args=[str(marker), 2.0], retries=1)
    paused = start_worker(broker_url, "--pool", "thread", "--lease", "1")
    wait_until(marker.exists, timeout=30)
    paused.signal(signal.SIGSTOP)  # a long GC pause or a network stall
    try:
        marker.unlink()
        rescuer = start_worker(broker_url, "--pool", "thread", "--lease", "1")
        assert handle.result(timeout=60) == rescuer.pid
    finally:
        paused.signal(signal.SIGCONT)
    wait_until(lambda: "taken over" in paused.output(), timeout=30)
    paused.signal(signal.SIGTERM)
    assert paused.wait(timeout=30) == 0
    assert handle.result(timeout=1) == rescuer.pid  # the late run changed nothing
    info = handle.info()
    assert info is not None and info.attempts == 2


def test_crashed_child_is_replaced(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, "--pool", "process", "--concurrency", "1")
    crashing = app.enqueue("crash")
    with pytest.raises(runq.TaskFailed) as failure:
        crashing.result(timeout=30)
    assert failure.value.type == "WorkerCrashed"
    info = crashing.info()
    assert info is not None and info.attempts == 2  # retried once, as configured
    assert app.enqueue("add", args=[3, 4]).result(timeout=30) == 7


def test_poison_pill_that_kills_its_worker_ends_failed(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    handle = app.enqueue("kill_worker")  # retries=1 at the worker: two runs at most
    for attempt in (1, 2):
        worker = start_worker(broker_url, "--pool", "thread", "--lease", "0.5")
        assert worker.wait(timeout=60) == -signal.SIGKILL
        info = handle.info()
        assert info is not None and info.attempts == attempt
    start_worker(broker_url, "--pool", "thread", "--lease", "0.5")
    with pytest.raises(runq.TaskFailed) as failure:
        handle.result(timeout=60)
    assert failure.value.type == "WorkerLost"
    info = handle.info()
    assert info is not None and info.attempts == 3


def test_malformed_message_is_dead_lettered_with_its_bytes(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    bad = app.enqueue("add", args=[1, 2])
    corrupt_payload(broker_url, bad.id, "{not json")  # before any worker runs
    start_worker(broker_url, "--pool", "thread")
    with pytest.raises(runq.TaskFailed) as failure:
        bad.result(timeout=30)
    assert failure.value.type == "MalformedMessage"
    info = bad.info()
    assert info is not None and info.error is not None and info.error["raw"] == "{not json"
    assert app.enqueue("add", args=[1, 2]).result(timeout=30) == 3  # the worker goes on


def test_worker_publishes_heartbeat(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    worker = start_worker(broker_url, "--pool", "thread", "--concurrency", "3", "--queues", "a,default")
    [seen] = wait_until(app.workers, timeout=30)
    assert (seen.pid, seen.pool, seen.concurrency, seen.queues) == (worker.pid, "thread", 3, ("a", "default"))
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert app.workers() == []  # unregistered at a clean exit


def test_bad_app_path_is_a_clear_error(broker_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runq", "worker", "no_such_module:app", "--url", broker_url],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no_such_module" in result.stderr and "Traceback" not in result.stderr


def test_a_child_dying_mid_batch_loses_none_of_the_batch(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    """Short tasks reach a child several per message; a crash in the middle of such a batch
    fails only the crashing task, and the batch's unstarted tasks run once, elsewhere."""
    warm_up = app.enqueue_many([runq.Signature("noop") for _ in range(100)])
    start_worker(broker_url, "--pool", "process", "--concurrency", "1")
    for handle in warm_up:  # the pool has learnt that these tasks are short
        handle.result(timeout=60)
    mixed = [runq.Signature("noop") for _ in range(40)]
    mixed[20] = runq.Signature("crash").options(retries=0)
    handles = app.enqueue_many(mixed)
    with pytest.raises(runq.TaskFailed) as failure:
        handles[20].result(timeout=60)
    assert failure.value.type == "WorkerCrashed"
    for handle in handles[:20] + handles[21:]:
        assert handle.result(timeout=60) is None
        info = handle.info()
        assert info is not None and info.attempts == 1, handle.id


@pytest.mark.parametrize("pool", POOLS)
def test_running_means_started_not_claimed_ahead(
    app: runq.App, broker_url: str, start_worker: StartWorker, pool: str, tmp_path: Path
) -> None:
    """Issue 19 part 6: a --concurrency 2 worker holds 4 claims (one prefetched per slot),
    and the broker marks all 4 running; status and workers say 2 running, 2 prefetched."""
    markers = [tmp_path / f"started-{i}" for i in range(4)]
    handles = [app.enqueue("touch_then_sleep", args=[str(marker), 60]) for marker in markers]
    start_worker(broker_url, "--pool", pool, "--concurrency", "2")
    wait_until(lambda: sum(marker.exists() for marker in markers) == 2, timeout=30)
    started = {handle.id for handle, marker in zip(handles, markers, strict=True) if marker.exists()}

    def heartbeat() -> WorkerInfo | None:
        live = app.workers()
        return live[0] if live and len(live[0].current) + len(live[0].prefetched) == 4 else None

    worker = wait_until(heartbeat, timeout=30)
    assert set(worker.current) == started
    assert set(worker.prefetched) == {handle.id for handle in handles} - started

    runner = CliRunner()
    status = json.loads(runner.invoke(main, ["status", "--json", "--url", broker_url]).stdout)
    assert (status["queues"]["default"]["running"], status["prefetched"]) == (2, 2)
    assert status["queues"]["default"]["pending"] == 0  # held by the worker, not in the queue
    workers = json.loads(runner.invoke(main, ["workers", "--json", "--url", broker_url]).stdout)
    assert [(len(w["current"]), len(w["prefetched"])) for w in workers] == [(2, 2)]
    table = runner.invoke(main, ["status", "--url", broker_url]).stdout
    assert "2 running, 2 prefetched" in table
