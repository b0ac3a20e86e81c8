"""What a SIGKILL can run twice (docs/reliability.md): the runs a worker finished and had not
settled. The pool starts no run while ``concurrency + settle_batch`` runs are open (started, or
finished and unsettled), so with ``--settle-batch 0`` a killed worker runs again at most one
finished task per slot. And a claim held ahead whose lease was not confirmed for half a lease
(a frozen worker, a long outage) starts only once a renewal says it is still this worker's.

The pools are driven directly (a real pool of each kind, no broker); the bound itself with a real
worker process whose broker is stalled (SQLite write lock, Redis ``CLIENT PAUSE WRITE``, a
PostgreSQL table lock) so its outcomes cannot be settled, then SIGKILLed.
"""

from __future__ import annotations

import json
import queue
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import runq
from runq.settings import Settings
from runq.worker.pools import Pool, create_pool
from runq.worker.run import Job
from tests.conftest import WorkerProcess, wait_until
from tests.tasks import app as tasks_app

BROKER_KINDS = ["sqlite", "redis", "postgres"]
POOLS = ["thread", "async", "process"]


# -- the pools -----------------------------------------------------------------------------


@contextmanager
def pool_of(kind: str, ended: queue.Queue[str], **settings: Any) -> Iterator[Pool]:
    pool = create_pool(
        Settings(url="memory://", pool=kind, **settings), tasks_app, "tests.tasks:app", lambda job, _: ended.put(job.id)
    )
    pool.start()
    try:
        yield pool
    finally:
        pool.terminate()
        # What a worker's exit cleans up, a test must: the async pool's loop, the process pool's children.
        loop = getattr(pool, "_loop", None)
        if loop is not None:
            wait_until(lambda: not loop.is_running(), 10)
            loop.close()
        for child in list(getattr(pool, "_children", [])):  # a snapshot: serving threads retire theirs
            child.proc.wait(10)


def jobs(count: int, name: str = "noop") -> list[Job]:
    return [Job(f"default.{i:032x}", name, "default", 1, [], {}) for i in range(count)]


def nothing_more(ended: queue.Queue[str], window: float = 0.5) -> bool:
    """True when no run ends within ``window`` seconds (the window is what is measured)."""
    try:
        ended.get(timeout=window)
    except queue.Empty:
        return True
    return False


@pytest.mark.parametrize("kind", POOLS)
def test_no_run_starts_while_concurrency_plus_settle_batch_runs_are_unsettled(kind: str) -> None:
    ended: queue.Queue[str] = queue.Queue()
    with pool_of(kind, ended, concurrency=2, settle_batch=1) as pool:  # at most 3 open
        pool.submit_many(jobs(6), time.monotonic())
        first = [ended.get(timeout=60) for _ in range(3)]
        assert nothing_more(ended)  # three finished, none settled: the other three wait
        pool.settled(first[:1])
        fourth = ended.get(timeout=60)
        assert nothing_more(ended)
        pool.settled([*first[1:], fourth])
        assert len({ended.get(timeout=60) for _ in range(2)}) == 2


@pytest.mark.parametrize("kind", POOLS)
def test_a_claim_unconfirmed_for_half_a_lease_starts_only_after_a_renewal(kind: str) -> None:
    ended: queue.Queue[str] = queue.Queue()
    fresh, stale = jobs(2)
    with pool_of(kind, ended, concurrency=2, lease=2.0) as pool:
        pool.submit_many([fresh], time.monotonic())
        pool.submit_many([stale], time.monotonic() - 1.5)  # as after a 1.5 s SIGSTOP: maybe taken over
        assert ended.get(timeout=60) == fresh.id
        assert nothing_more(ended)
        pool.renewed([stale.id], time.monotonic())  # the keeper's renewal: still ours
        assert ended.get(timeout=60) == stale.id


# -- a real worker, SIGKILLed with outcomes it could not settle ------------------------------


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("RUNQ_TEST_LEDGER", str(path))  # tests/flow_tasks.py writes each start and end
    return path


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextmanager
def settles_stalled(url: str) -> Iterator[None]:
    """The broker takes no write (settle, claim, renewal) until the block ends; reads go on."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            db.rollback()
            db.close()
    elif url.startswith("postgres"):
        import psycopg

        from runq.brokers.postgres import postgres_conninfo

        conninfo, schema = postgres_conninfo(url)
        with psycopg.connect(conninfo) as conn:
            conn.execute(f'LOCK TABLE "{schema}".tasks IN EXCLUSIVE MODE')
            try:
                yield
            finally:
                conn.rollback()
    else:
        import redis

        with redis.Redis.from_url(url) as client:
            client.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
            try:
                yield
            finally:
                client.execute_command("CLIENT", "UNPAUSE")


def kill_while_stalled(
    url: str, ledger: Path, start_worker: Callable[..., WorkerProcess], flags: tuple[str, ...], finished: int
) -> tuple[int, int]:
    """Twelve 0.5 s tasks; a worker of 4 slots (it claims 8) runs while the broker takes no
    settle, is SIGKILLed once it finished ``finished`` of them, and a fresh worker runs what it
    left. Returns (runs the killed worker finished, tasks that ran to their end twice)."""
    app = runq.App(url)
    handles = [app.enqueue("slow", args=[0.5], retries=3) for _ in range(12)]
    worker = ("--pool", "thread", "--concurrency", "4", "--lease", "4", *flags)
    victim = start_worker(url, *worker, app="tests.flow_tasks:app")

    def ends() -> list[dict[str, Any]]:
        return [e for e in events(ledger) if e["pid"] == victim.pid and e["event"] == "end"]

    wait_until(lambda: any(e["pid"] == victim.pid for e in events(ledger)), 60)
    with settles_stalled(url):
        wait_until(lambda: len(ends()) >= finished, 60)
        assert nothing_started_within(ledger, victim.pid, 1.0)  # the window in which the bound must hold
        victim.signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
    start_worker(url, *worker, app="tests.flow_tasks:app")
    for handle in handles:
        handle.result(timeout=120)
    app.close()
    runs = Counter(e["task"] for e in events(ledger) if e["event"] == "end")
    assert set(runs) == {handle.id for handle in handles}  # nothing lost
    return len(ends()), sum(count > 1 for count in runs.values())


def nothing_started_within(ledger: Path, pid: int, window: float) -> bool:
    """No run of ``pid`` starts in the next ``window`` seconds (the window is what is measured)."""
    before = sum(e["pid"] == pid and e["event"] == "start" for e in events(ledger))
    time.sleep(window)
    return sum(e["pid"] == pid and e["event"] == "start" for e in events(ledger)) == before


@pytest.mark.timeout(300)
def test_with_settle_batch_0_a_killed_worker_runs_again_at_most_one_finished_task_per_slot(
    broker_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    finished, duplicated = kill_while_stalled(broker_url, ledger, start_worker, ("--settle-batch", "0"), 4)
    assert finished == 4  # its 4 slots ran 4 tasks; the 4 it held ahead never started
    assert duplicated <= 4


@pytest.mark.timeout(300)
def test_by_default_a_killed_worker_runs_again_every_task_it_had_not_settled(
    sqlite_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The contrast: at the default (settle_batch 256) the claims held ahead run too, and a
    SIGKILL runs all 8 again: the bound is the setting, not luck."""
    finished, duplicated = kill_while_stalled(sqlite_url, ledger, start_worker, (), 8)
    assert finished == 8
    assert duplicated > 4
