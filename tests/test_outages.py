"""A worker started while its broker is down (SPEC §3): it logs, backs off and resumes when the
broker comes back, on PostgreSQL as on Redis (a worker on an unreachable PostgreSQL used to exit
after 5 s). Real worker processes, private servers stopped and started on their own ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import runq
from runq.testing import RedisNotInstalled, RedisServer
from tests.conftest import WorkerProcess, wait_until

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
