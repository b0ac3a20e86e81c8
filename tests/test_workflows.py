"""Workflows, rate limits and circuit breakers with real workers, on both brokers (issue 6)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import runq
from runq.models import Status
from tests.conftest import EVERY_BROKER, WorkerProcess, wait_until

BROKER_KINDS = EVERY_BROKER  # the worker's semantics, proven on every broker

StartWorker = Callable[..., WorkerProcess]
THREADS = ("--pool", "thread", "--concurrency", "4")


def s(app: runq.App, name: str, *args: Any, **options: Any) -> runq.Signature:
    signature = runq.Signature(name, args, app=app)
    return signature.options(**options) if options else signature


def final(app: runq.App, task_id: str, timeout: float = 30) -> runq.TaskInfo:
    info = app.broker.wait(task_id, timeout)
    assert info is not None and info.status.final, info
    return info


# -- chain, group, chord -------------------------------------------------------------------------


def test_chain_passes_each_result_on(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, *THREADS, "--queues", "default,b")
    last = runq.chain(s(app, "add", 1, 2), s(app, "add", 10, queue="b"), s(app, "add", 100)).delay()
    assert last.result(timeout=30) == 113
    assert runq.chain(s(app, "echo", "only")).delay().result(timeout=30) == {"args": ["only"], "kwargs": {}}


def test_a_failing_step_cancels_the_rest_of_the_chain(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    start_worker(broker_url, *THREADS)
    last = runq.chain(s(app, "add", 1, 2), s(app, "fail_always"), s(app, "add", 1), s(app, "add", 2)).delay()
    with pytest.raises(runq.TaskCancelled, match="failed"):
        last.result(timeout=30)
    steps = {task.name: task for task in app.list(limit=100)}
    assert sorted(task.status.value for task in app.list(limit=100)) == [
        "cancelled",
        "cancelled",
        "failed",
        "succeeded",
    ]
    assert steps["fail_always"].attempts == 1 and steps["fail_always"].args == []  # results are passed at run time
    cancelled = app.info(last.id)
    assert cancelled is not None and cancelled.attempts == 0 and cancelled.started_at is None  # never ran


def test_group_results_in_member_order(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, *THREADS)
    handle = runq.group(s(app, "add", i, i) for i in range(10)).delay()
    assert isinstance(handle, runq.GroupHandle) and len(handle.ids) == len(handle.handles) == 10
    assert handle.results(timeout=30) == [2 * i for i in range(10)]
    with pytest.raises(runq.TaskFailed):
        runq.group(s(app, "add", 1, 1), s(app, "fail_always")).delay().results(timeout=30)


def test_chord_callback_runs_once_on_every_result(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, *THREADS, "--queues", "default,a")
    members = runq.group([s(app, "add", i, 1, queue="a" if i % 2 else "default") for i in range(6)])
    callback = runq.chord(members, s(app, "total", 1000)).delay()
    assert callback.result(timeout=30) == 1000 + sum(range(1, 7))
    assert [t.name for t in app.list(status="succeeded", limit=100)].count("total") == 1
    assert runq.chord(runq.group([]), s(app, "total")).delay().result(timeout=30) == 0


def test_chord_with_a_failed_member_cancels_the_callback_naming_it(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    start_worker(broker_url, *THREADS)
    members = [s(app, "add", 1, 1), s(app, "fail_always"), s(app, "add", 2, 2)]
    callback = runq.chord(members, s(app, "total")).delay()
    with pytest.raises(runq.TaskCancelled):
        callback.result(timeout=30)
    [failed] = app.list(status="failed")
    info = app.info(callback.id)
    assert info is not None and info.error is not None and info.status is Status.CANCELLED
    assert failed.id in info.error["message"] and info.error["type"] == "DependencyFailed"


def test_steps_after_a_keyed_step_follow_the_task_its_key_answered_with(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    """A keyed step answered with an earlier task's id: the steps after it wait for that task
    (they were left waiting for the planned id, which never existed, and were cancelled)."""
    start_worker(broker_url, *THREADS, "--queues", "default,b")
    first = runq.chain(s(app, "add", 1, 2, key="k"), s(app, "add", 10, queue="b")).delay()
    assert first.result(timeout=30) == 13
    again = runq.chain(s(app, "add", 1, 2, key="k"), s(app, "add", 100, queue="b")).delay()
    assert again.result(timeout=30) == 103  # on the first chain's keyed step's result
    twice = runq.chord([s(app, "add", 2, 2, key="g"), s(app, "add", 2, 2, key="g")], s(app, "total")).delay()
    assert twice.result(timeout=30) == 8  # one task, its result passed for both members
    keyed = [t for t in app.list(status="succeeded", limit=100) if t.args in ([1, 2], [2, 2])]
    assert len(keyed) == 2  # each key ran its task once


# -- after= ----------------------------------------------------------------------------------------


def test_after_across_two_queues(app: runq.App, broker_url: str, tmp_path: Path, start_worker: StartWorker) -> None:
    start_worker(broker_url, *THREADS, "--queues", "a,b")
    marker = tmp_path / "started"
    first = app.enqueue("touch_then_sleep", args=[str(marker), 0.3], queue="a")
    second = app.enqueue("add", args=[1, 2], queue="b")
    child = app.enqueue("echo", args=["child"], queue="b", after=[first, second])
    assert child.status() is Status.WAITING or child.status() is Status.PENDING
    assert child.result(timeout=30) == {"args": ["child"], "kwargs": {}}
    parent = final(app, first.id)
    info = app.info(child.id)
    assert info is not None and info.started_at is not None and parent.finished_at is not None
    assert info.started_at >= parent.finished_at  # released by the parent, not before


def test_after_an_already_finished_parent(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, *THREADS, "--queues", "default,b")
    done = app.enqueue("add", args=[1, 2])
    failed = app.enqueue("fail_always")
    final(app, done.id), final(app, failed.id)
    assert app.enqueue("add", args=[3, 4], queue="b", after=[done]).result(timeout=30) == 7
    cancelled = app.enqueue("add", args=[3, 4], queue="b", after=[done, failed])
    with pytest.raises(runq.TaskCancelled, match=failed.id):
        cancelled.result(timeout=30)


def test_cancel_cascades_to_dependents(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, *THREADS, "--queues", "default,b")
    parent = app.enqueue("add", args=[1, 2], delay=60)
    child = app.enqueue("add", args=[1, 2], queue="b", after=[parent])
    grandchild = app.enqueue("add", args=[1, 2], after=[child])
    assert parent.cancel()
    for handle in (child, grandchild):
        with pytest.raises(runq.TaskCancelled, match="cancelled"):
            handle.result(timeout=30)


# -- rate limits ------------------------------------------------------------------------------------


def test_rate_limit_spreads_runs_across_workers_without_blocking_the_queue(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    for _ in range(2):
        start_worker(broker_url, *THREADS)
    wait_until(lambda: len(app.workers()) == 2, 30)
    limited = [app.enqueue("limited") for _ in range(20)]  # 5/s: first to last start >= 3.8 s apart
    others = [app.enqueue("stamp") for _ in range(20)]
    started = [h.result(timeout=60) for h in limited]
    others_done = [final(app, h.id).finished_at for h in others]
    assert max(started) - min(started) >= 3.0
    gaps = sorted(b - a for a, b in zip(sorted(started), sorted(started)[1:], strict=False))
    assert gaps[len(gaps) // 2] >= 0.15  # evenly spaced (0.2 s), not in bursts
    last_other = max(t.timestamp() for t in others_done if t is not None)
    assert last_other < max(started) - 2.0  # the queue's other tasks were not held up
    assert all(final(app, h.id).attempts == 1 for h in limited)  # waiting is not an attempt


# -- circuit breaker --------------------------------------------------------------------------------


def test_breaker_opens_holds_probes_and_closes(
    app: runq.App, broker_url: str, tmp_path: Path, start_worker: StartWorker
) -> None:
    start_worker(broker_url, *THREADS)
    downstream = tmp_path / "downstream"
    downstream.write_text("down")
    for _ in range(2):  # breaker=(2, 2.0): two failures in a row open it for 2 s
        assert final(app, app.enqueue("guarded", args=[str(downstream)]).id).status is Status.FAILED
    # The settle of the second failure drives the breaker (same step); its result() may come first.
    state = wait_until(lambda: (b := app.stats().breakers.get("guarded")) and b["state"] == "open" and b, 10)
    assert state["failures"] == 2
    downstream.write_text("up")
    opened = time.time()
    held = app.enqueue("guarded", args=[str(downstream)])
    # Held, not failed: it waits in the broker while the breaker is open.
    wait_until(lambda: (info := held.info()) is not None and info.status is Status.SCHEDULED, 10)
    assert held.result(timeout=30) == "up"  # the probe, once the 2 s passed
    info = held.info()
    assert info is not None and info.attempts == 1 and info.started_at is not None
    assert info.started_at.timestamp() >= state["open_until"] - 0.1 and time.time() - opened < 30
    closed = wait_until(lambda: (b := app.stats().breakers["guarded"])["state"] == "closed" and b, 10)
    assert closed["failures"] == 0
