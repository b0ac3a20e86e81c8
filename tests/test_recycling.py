"""Worker recycling (SPEC §9): ``--max-tasks-per-child`` and ``--max-memory-per-child`` replace a
process-pool child after the task during which it reached its limit; no task fails or is lost,
and the replacement is started before the old child goes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

import runq
from runq.models import Status
from runq.settings import Settings
from tests.conftest import WorkerProcess, wait_until

StartWorker = Callable[..., WorkerProcess]
APP = "tests.soft_tasks:app"


def succeeded_once(app: runq.App, handles: list[runq.Handle[object]]) -> list[object]:
    """Every task's result, after checking each succeeded on its first attempt."""
    results = [handle.result(timeout=60) for handle in handles]
    infos = [handle.info() for handle in handles]
    assert [(info.status, info.attempts) for info in infos if info] == [(Status.SUCCEEDED, 1)] * len(handles)
    assert not app.list(Status.FAILED)
    return results


def test_a_child_is_replaced_after_max_tasks(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, "--concurrency", "2", "--max-tasks-per-child", "3", app=APP)
    handles = [app.enqueue("recycle.pid") for _ in range(30)]  # short tasks: batched to children
    pids = Counter(succeeded_once(app, handles))
    assert max(pids.values()) <= 3, pids  # no child ran more than its limit
    assert len(pids) >= 10, pids


def test_a_leaking_child_is_replaced_after_the_task_that_reached_max_memory(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    """Each task keeps 40 MiB for good: a child reaches 150 MiB by its third or fourth task
    (a fresh one holds a few tens), runs no further task, and no task is lost."""
    start_worker(broker_url, "--concurrency", "2", "--max-memory-per-child", "150", app=APP)
    handles = [app.enqueue("recycle.leak", [40]) for _ in range(16)]
    pids = Counter(succeeded_once(app, handles))
    assert max(pids.values()) <= 4, pids
    assert len(pids) >= 4, pids


def test_the_replacement_starts_while_the_last_task_still_runs(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    """One slot, one task per child: while a child runs its last task, its replacement is
    already there (a second live child of the worker), so the slot never waits for one."""
    start_worker(broker_url, "--concurrency", "1", "--max-tasks-per-child", "1", app=APP)
    handles = [app.enqueue("recycle.sibling", [10.0]) for _ in range(3)]
    results = succeeded_once(app, handles)
    assert [result["sibling"] for result in results] == [True, True, True]  # type: ignore[index]
    assert len({result["pid"] for result in results}) == 3  # type: ignore[index]


def test_limits_are_settings_read_from_the_environment(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    settings = Settings.from_env({"RUNQ_MAX_TASKS_PER_CHILD": "5", "RUNQ_MAX_MEMORY_PER_CHILD": "512"})
    assert (settings.max_tasks_per_child, settings.max_memory_per_child) == (5, 512)
    assert Settings.from_env({}, max_tasks_per_child=7).max_tasks_per_child == 7
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 0"):
        Settings(max_tasks_per_child=-1)
    with pytest.raises(ValueError, match="RUNQ_MAX_MEMORY_PER_CHILD='lots' is not a valid int"):
        Settings.from_env({"RUNQ_MAX_MEMORY_PER_CHILD": "lots"})
    worker = start_worker(broker_url, "--pool", "thread", "--max-tasks-per-child", "2", app=APP)
    assert app.enqueue("recycle.pid").result(timeout=60)  # a thread pool has no children: it runs on
    wait_until(lambda: "apply to the process pool only" in worker.output(), timeout=10)
