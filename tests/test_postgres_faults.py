"""PostgreSQL faults with real worker processes: nothing is lost when the server crashes and
restarts mid-drain or a worker's connection is terminated mid-claim, and 8 workers contending
on one queue never run a task twice.

Every task records its own runs in a file (``tests/postgres_tasks.py``), so the tests count
runs independently of what the broker says.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import runq
from runq.errors import BrokerUnavailable
from tests.conftest import ROOT, wait_until

psycopg = pytest.importorskip("psycopg")

from runq.brokers.postgres import postgres_conninfo  # noqa: E402 - after the importorskip
from tests.postgres_server import PostgresNotInstalled, PrivatePostgres  # noqa: E402

APP = "tests.postgres_tasks:app"


class Worker:
    """``runq worker tests.postgres_tasks:app`` in a subprocess, its log in a file."""

    def __init__(self, url: str, log: Path, *args: str) -> None:
        self.log = log
        env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runq", "worker", APP, "--pool", "thread", *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(url: str, *args: str) -> Worker:
        worker = Worker(url, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivatePostgres]:
    try:
        server = PrivatePostgres()
    except PostgresNotInstalled as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    yield server
    server.close()


def _runs(path: Path) -> Counter[str]:
    """How many times each task id ran, and (checked by the callers) by which processes."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines() if line)


def _pids(path: Path) -> set[str]:
    return {line.split()[1] for line in path.read_text().splitlines() if line}


def _succeeded(app: runq.App) -> int:
    try:
        queue = app.broker.stats().queues.get("default")
    except BrokerUnavailable:
        return 0  # the server is restarting: ask again
    return queue.succeeded if queue else 0


def _enqueue(app: runq.App, path: Path, count: int, seconds: float = 0.0) -> list[str]:
    record = runq.Signature("record", (str(path), seconds), app=app)
    ids: list[str] = []
    for start in range(0, count, 500):
        ids += [h.id for h in app.enqueue_many([record] * min(500, count - start))]
    return ids


def _assert_all_succeeded(app: runq.App, ids: list[str]) -> None:
    for task_id in ids:
        info = app.info(task_id)
        assert info is not None and info.status == "succeeded", (task_id, info)


def test_server_crash_and_restart_mid_drain_loses_nothing(
    private_server: PrivatePostgres, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    url = f"{private_server.url}?schema=restart"
    runs = tmp_path / "runs.txt"
    app = runq.App(url)
    ids = _enqueue(app, runs, 600, seconds=0.02)  # >= 1.5 s of work for the 8 threads
    for _ in range(2):
        workers(url, "-c", "4")
    wait_until(lambda: len(_runs(runs)) >= 100, timeout=60)
    assert len(_runs(runs)) < len(ids)
    private_server.restart()  # mid-drain: connections cut, uncommitted work rolled back
    wait_until(lambda: _succeeded(app) == len(ids), timeout=120, interval=0.2)
    ran = _runs(runs)
    assert set(ran) == set(ids)  # every task ran; at least once (a settle cut off reruns it)
    _assert_all_succeeded(app, ids)
    app.close()


def test_terminated_connection_mid_claim_loses_nothing(
    postgres_database: str, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    """The test holds an exclusive lock on the tasks table, so the worker's next statement on
    it (a claim, or the settle a claim round waits for) blocks inside that statement; that
    backend is then killed with ``pg_terminate_backend``."""
    schema = f"t_{secrets.token_hex(6)}"
    url = f"{postgres_database}?schema={schema}"
    runs = tmp_path / "runs.txt"
    app = runq.App(url)
    ids = _enqueue(app, runs, 400, seconds=0.002)
    workers(f"{url}&application_name=runq-victim", "-c", "4")
    conninfo, _ = postgres_conninfo(url)
    killed = 0
    with psycopg.connect(conninfo, autocommit=True) as admin:
        for goal in (50, 150, 250):
            wait_until(lambda goal=goal: len(_runs(runs)) >= goal, timeout=60)
            killed += _kill_a_blocked_claim(admin, schema)
    assert killed == 3
    wait_until(lambda: _succeeded(app) == len(ids), timeout=120, interval=0.2)
    assert set(_runs(runs)) == set(ids)
    _assert_all_succeeded(app, ids)
    app.close()


def _kill_a_blocked_claim(admin: Any, schema: str) -> int:
    """Lock the table, wait for the victim's next statement to queue behind the lock, terminate it."""
    with admin.transaction():
        admin.execute(f'LOCK TABLE "{schema}".tasks IN ACCESS EXCLUSIVE MODE')

        def blocked_claim() -> list[Any]:
            admin.execute("SELECT pg_stat_clear_snapshot()")  # else the transaction sees one snapshot
            return admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'runq-victim' AND wait_event_type = 'Lock'"
            ).fetchall()

        pids = wait_until(blocked_claim, timeout=30)
        for (pid,) in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return 1


def test_eight_contending_workers_never_double_claim(
    postgres_database: str, workers: Callable[..., Worker], tmp_path: Path
) -> None:
    url = f"{postgres_database}?schema=t_{secrets.token_hex(6)}"
    runs = tmp_path / "runs.txt"
    app = runq.App(url)
    app.broker.ping()
    started = [workers(url, "-c", "4", "--lease", "120") for _ in range(8)]
    wait_until(lambda: len(app.workers()) == 8, timeout=120, interval=0.1)  # all 8 idle and listening
    ids = _enqueue_slowly(app, runs, 1600)  # small batches: every batch wakes them all to contend
    wait_until(lambda: _succeeded(app) == len(ids), timeout=180, interval=0.2)
    ran = _runs(runs)
    assert set(ran) == set(ids)
    assert [task_id for task_id, n in ran.items() if n != 1] == []
    for task_id in ids[:: len(ids) // 50]:
        info = app.info(task_id)
        assert info is not None and info.attempts == 1
    assert len(_pids(runs)) >= 4, "too few workers took part for the test to mean anything"
    assert all(w.proc.poll() is None for w in started)
    app.close()


def _enqueue_slowly(app: runq.App, path: Path, count: int) -> list[str]:
    record = runq.Signature("record", (str(path), 0.0), app=app)
    ids: list[str] = []
    for _ in range(count // 20):
        ids += [h.id for h in app.enqueue_many([record] * 20)]
    return ids
