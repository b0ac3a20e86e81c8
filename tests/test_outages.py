"""A worker started while its broker is down (SPEC §3): it logs, backs off and resumes when the
broker comes back, on PostgreSQL as on Redis (a worker on an unreachable PostgreSQL used to exit
after 5 s). Real worker processes, private servers stopped and started on their own ports."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import runq
from tests.conftest import WorkerProcess, wait_until
from tests.support.servers import RedisNotInstalled, RedisServer

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[object]:
    pytest.importorskip("psycopg")
    from tests.postgres_server import PostgresNotInstalled, PrivatePostgres

    try:
        server = PrivatePostgres()
    except PostgresNotInstalled as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    yield server
    server.close()


def resumes_when_the_broker_returns(url: str, start_broker: Callable[[], None], start_worker: StartWorker) -> str:
    """Start a worker on the stopped broker; once it has retried (and is still running), start the
    broker: a task enqueued then runs. The worker's log, for the callers' checks."""
    worker = start_worker(url, "--pool", "thread", "--concurrency", "2")
    wait_until(lambda: worker.output().count("broker unavailable") >= 2 or worker.proc.poll() is not None, 30)
    assert worker.proc.poll() is None, worker.output()  # retrying, not gone
    start_broker()
    app = runq.App(url)
    try:
        handle = app.enqueue("add", args=[2, 3])
        assert handle.result(timeout=60) == 5
    finally:
        app.close()
    assert worker.proc.poll() is None
    return worker.output()


def test_worker_on_a_postgres_that_is_down_waits_for_it(private_postgres: object, start_worker: StartWorker) -> None:
    from tests.postgres_server import PrivatePostgres

    assert isinstance(private_postgres, PrivatePostgres)
    private_postgres.stop()
    url = private_postgres.url + "?password=wk-s3cret"  # (trust auth: ignored) never in the log
    output = resumes_when_the_broker_returns(url, private_postgres.start, start_worker)
    assert "wk-s3cret" not in output and "password=***" in output
    assert "error connecting" not in output  # psycopg_pool's raw lines: runq reports the outage itself


def test_worker_on_a_redis_that_is_down_waits_for_it(tmp_path: Path, start_worker: StartWorker) -> None:
    try:
        server = RedisServer(tmp_path / "redis")
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))
    try:
        server.kill()
        resumes_when_the_broker_returns(server.url, server.start, start_worker)
    finally:
        server.kill()


def test_a_settle_whose_reply_was_lost_is_not_reported_as_rejected(tmp_path: Path, start_worker: StartWorker) -> None:
    """Redis paused (SIGSTOP) longer than the client's 5 s socket timeout, shorter than the lease,
    mid-drain: the settle sent before the pause times out in the worker, which sends it again;
    Redis, resumed, runs both. The first applies the outcome, the second found the token already
    used and was answered "stale": the worker logged ``late outcome rejected: the task was
    cancelled or taken over`` for tasks that succeeded at attempt 1. The fencing was right (each
    outcome applied once); the answer was wrong: a repeat of an applied outcome is recognised."""
    try:
        server = RedisServer(tmp_path / "redis")
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))
    app = runq.App(server.url)
    try:
        handles = [app.enqueue("sleep", args=[0.1]) for _ in range(60)]
        worker = start_worker(server.url, "--pool", "thread", "--concurrency", "4", "--lease", "12")
        wait_until(lambda: worker.output().count("succeeded") >= 8, 30)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(7)  # the fault itself: longer than the socket timeout (5 s), shorter than the lease (12 s)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        for handle in handles:
            assert handle.result(timeout=60) == 0.1
        # (A claim whose reply was lost the same way leaves its tasks to their lease: they run
        # again at attempt 2, as at-least-once delivery says, and never ran here before.)
        wait_until(lambda: worker.output().count(" succeeded task_id=") >= len(handles))  # logged after settling
        output = worker.output()
        assert "broker unavailable" in output  # the pause was felt...
        assert "late outcome rejected" not in output, output  # ...and no applied outcome was called stale
        assert output.count(" succeeded task_id=") == len(handles)  # each reported once
    finally:
        app.close()
        server.kill()
