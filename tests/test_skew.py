"""Clock skew (issue 23 part 5): a worker whose wall clock is 30 s ahead or behind neither
reclaims early, nor runs a delayed task early, nor breaks a rate limit, because every
duration runq keeps (leases, etas, retry back-offs, rate-limit slots, heartbeats) is counted on
the broker's clock: Redis ``TIME`` inside its functions, PostgreSQL's ``transaction_timestamp()``.

The skew is real: each worker runs under libfaketime (Debian's ``faketime`` package, which
.ci/run installs) with its wall clock moved and its monotonic clock left alone, and the tests
check that it sees the moved time. SQLite is not here: its broker runs inside each process and
reads that process's clock, which on one machine is the same clock for every process (README,
"Reliability").
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import runq
from tests.conftest import WorkerProcess, wait_until

BROKER_KINDS = ["redis", "postgres"]
StartWorker = Callable[..., WorkerProcess]
SKEW = 30.0
THREADS = ("--pool", "thread", "--concurrency", "4")


def skewed(seconds: float) -> tuple[str, ...]:
    """The command prefix that runs a worker with its wall clock ``seconds`` off."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        if os.environ.get("CI"):
            raise RuntimeError("libfaketime is missing: .ci/run installs Debian's faketime package")
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    offset = f"{seconds:+.0f}s"
    return ("env", f"LD_PRELOAD={found[0]}", f"FAKETIME={offset}", "FAKETIME_DONT_FAKE_MONOTONIC=1")


def start_skewed(start_worker: StartWorker, url: str, seconds: float, *args: str) -> WorkerProcess:
    return start_worker(url, *THREADS, *args, app="tests.skew_tasks:app", prefix=skewed(seconds))


def assert_skewed(app: runq.App, seconds: float, queue: str) -> None:
    """The worker on ``queue`` really reads a moved wall clock (``stamp`` returns its time.time())."""
    seen = app.enqueue("stamp", queue=queue).result(timeout=30) - time.time()
    assert abs(seen - seconds) < 5, f"the worker's clock is {seen:+.1f}s off, not {seconds:+.0f}s"


def test_skewed_workers_do_not_reclaim_each_others_tasks(
    app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A worker 30 s behind holds a task for 4 s on a 2 s lease; one 30 s ahead claims all the
    while. Were leases counted on the workers' clocks, the one behind would write a lease
    already 28 s over, and the one ahead would see any lease 30 s over: the task would run twice."""
    behind = start_skewed(start_worker, broker_url, -SKEW, "--lease", "2", "--queues", "default,behind")
    assert_skewed(app, -SKEW, "behind")
    mark = tmp_path / "started"
    handle = app.enqueue("touch_then_sleep", [str(mark), 4.0])
    wait_until(mark.exists, timeout=30)
    ahead = start_skewed(start_worker, broker_url, +SKEW, "--lease", "2", "--queues", "default,ahead")
    assert_skewed(app, +SKEW, "ahead")  # it claims from "default" too, and finds nothing to take
    assert len(app.workers()) == 2  # both alive: heartbeats expire on the broker's clock too
    assert handle.result(timeout=60) == "finished"
    info = handle.info()
    assert info is not None and info.attempts == 1 and info.error is None, info
    assert mark.read_text() == str(behind.pid)
    assert handle.id not in ahead.output()


@pytest.mark.parametrize("seconds", [+SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_skewed_worker_runs_a_delayed_task_on_time(
    app: runq.App, broker_url: str, start_worker: StartWorker, seconds: float
) -> None:
    start_skewed(start_worker, broker_url, seconds)
    assert_skewed(app, seconds, "default")
    enqueued = time.monotonic()
    handle = app.enqueue("stamp", delay=2.0)
    handle.result(timeout=60)
    elapsed = time.monotonic() - enqueued
    info = handle.info()
    assert info is not None and info.started_at is not None and info.enqueued_at is not None
    assert elapsed >= 2.0, f"ran {2.0 - elapsed:.2f}s early"
    assert elapsed < 2.0 + 10, "ran late: the eta was read on the wrong clock"
    assert (info.started_at - info.enqueued_at).total_seconds() >= 1.99  # on the broker's clock


def test_a_rate_limit_holds_across_workers_with_skewed_clocks(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    """``limited`` allows 5 starts a second across every worker: 15 of them take 2.8 s whether
    the workers' clocks agree or not (counted on theirs, the one ahead would start them all at
    once and the one behind would hold them for 30 s)."""
    start_skewed(start_worker, broker_url, +SKEW, "--queues", "ahead")
    start_skewed(start_worker, broker_url, -SKEW, "--queues", "behind")
    assert_skewed(app, +SKEW, "ahead")
    assert_skewed(app, -SKEW, "behind")
    # One limit per task name, whatever the queue: each worker must run its own share.
    handles = [app.enqueue("limited", queue="ahead" if i % 2 else "behind") for i in range(15)]
    for handle in handles:
        handle.result(timeout=60)
    starts = []
    workers = set()
    for handle in handles:
        info = handle.info()
        assert info is not None and info.started_at is not None and info.attempts == 1
        starts.append(info.started_at.timestamp())
        workers.add(info.worker)
    starts.sort()
    assert len(workers) == 2
    assert 2.4 <= starts[-1] - starts[0] < 10, starts
    busiest = max(sum(1 for t in starts if first <= t < first + 1.0) for first in starts)
    assert busiest <= 6, f"{busiest} starts within one second (the limit is 5/s)"
