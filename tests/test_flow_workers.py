"""SPEC §9 with real worker processes: concurrency limits hold across a fleet (a ledger the
tasks write proves it), held tasks start soon after a seat frees, a SIGKILLed worker's seats
free at its lease expiry, a pause stops starts within a second, and an expired task shows in
``runq list cancelled``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import runq
from runq.models import Status
from tests.conftest import EVERY_BROKER, ROOT, WorkerProcess, wait_until

BROKER_KINDS = EVERY_BROKER  # SQLite, Redis, PostgreSQL and a real Redis Cluster
APP = "tests.flow_tasks:app"
Ledger = list[dict[str, Any]]


@pytest.fixture
def ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("RUNQ_TEST_LEDGER", str(path))  # the workers inherit it
    return path


def read(path: Path) -> Ledger:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def most_at_once(events: Ledger) -> dict[str, int]:
    """The most runs of each key that were inside their start..end at the same time."""
    running: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for event in sorted(events, key=lambda e: (e["t"], e["event"] == "start")):  # an end first at a tie
        running[event["key"]] += 1 if event["event"] == "start" else -1
        peak[event["key"]] = max(peak[event["key"]], running[event["key"]])
    return dict(peak)


def finished(app: runq.App, handles: list[runq.Handle[Any]], timeout: float = 120) -> None:
    for handle in handles:
        handle.result(timeout=timeout)


@pytest.mark.timeout(300)
def test_a_fleet_never_runs_more_of_a_key_than_its_limit(
    broker_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(broker_url)
    limit = runq.Limit(2, key="key")
    # Keys in blocks, so each one's tasks queue up together and the limit binds hard.
    handles = [
        app.enqueue("per_key", kwargs={"key": f"k{k}", "seconds": 0.05}, concurrency=limit)
        for k in range(3)
        for _ in range(12)
    ]
    for _ in range(3):
        start_worker(broker_url, "--pool", "thread", "--concurrency", "16", app=APP)
    finished(app, handles)
    events = read(ledger)
    assert len(events) == 2 * len(handles)
    peaks = most_at_once(events)
    assert peaks == {"k0": 2, "k1": 2, "k2": 2}  # reached, never passed
    assert all(info.attempts == 1 for h in handles if (info := app.info(h.id)) is not None)  # held: no attempt used
    app.close()


@pytest.mark.timeout(300)
def test_a_held_task_starts_soon_after_a_seat_frees(
    broker_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(broker_url)
    for _ in range(2):
        start_worker(broker_url, "--pool", "thread", "--concurrency", "4", app=APP)
    handles = [app.enqueue("serial", kwargs={"seconds": 0.2}, concurrency=1) for _ in range(6)]
    finished(app, handles)
    runs = sorted((e for e in read(ledger) if e["key"] == "serial"), key=lambda e: e["t"])
    assert [e["event"] for e in runs] == ["start", "end"] * 6  # one at a time, across two workers
    gaps = [runs[i + 1]["t"] - runs[i]["t"] for i in range(1, len(runs) - 1, 2)]  # end -> next start
    assert max(gaps) < 1.0, gaps  # woken by the release, not polled
    app.close()


@pytest.mark.timeout(300)
def test_the_seats_of_a_killed_worker_free_at_its_lease_expiry(
    broker_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(broker_url)
    victim = start_worker(broker_url, "--pool", "thread", "--concurrency", "2", "--lease", "1", app=APP)
    stuck = app.enqueue("serial", kwargs={"seconds": 600}, concurrency=1)
    wait_until(lambda: any(e["event"] == "start" for e in read(ledger)), 60)
    waiting = app.enqueue("serial", kwargs={"seconds": 0.01}, concurrency=1)
    wait_until(lambda: (info := app.info(waiting.id)) is not None and info.status is Status.SCHEDULED, 30)
    victim.signal(signal.SIGKILL)
    victim.wait(30)
    assert app.cancel(stuck.id)  # the lost task would run again (WorkerLost); this frees the seat for good
    start_worker(broker_url, "--pool", "thread", "--concurrency", "2", "--lease", "1", app=APP)
    assert waiting.result(timeout=60) is None
    app.close()


@pytest.mark.timeout(300)
def test_a_killed_worker_s_task_runs_again_in_its_seat(
    broker_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(broker_url)
    victim = start_worker(broker_url, "--pool", "thread", "--concurrency", "2", "--lease", "1", app=APP)
    first = app.enqueue("per_key", kwargs={"key": "a", "seconds": 3}, concurrency=1, retries=1)
    wait_until(lambda: any(e["event"] == "start" for e in read(ledger)), 60)
    second = app.enqueue("per_key", kwargs={"key": "a", "seconds": 0.01}, concurrency=1)
    victim.signal(signal.SIGKILL)
    victim.wait(30)
    start_worker(broker_url, "--pool", "thread", "--concurrency", "2", "--lease", "1", app=APP)
    assert first.result(timeout=60) == "a" and second.result(timeout=60) == "a"
    info = app.info(first.id)
    assert info is not None and info.attempts == 2  # its lost run counted: WorkerLost, run again
    assert most_at_once([e for e in read(ledger) if e["pid"] != victim.pid]) == {"a": 1}
    app.close()


@pytest.mark.timeout(300)
def test_no_task_of_a_paused_queue_starts_a_second_after_the_pause(
    broker_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(broker_url)
    # Two slots and long tasks: the worker holds claims ahead (prefetched) when the pause comes.
    start_worker(broker_url, "--pool", "thread", "--concurrency", "2", app=APP)
    # Runs of 1.5 s: a claim taken ahead would start up to 1.5 s after the pause unless handed back.
    handles = [app.enqueue("slow", args=[1.5]) for _ in range(8)]
    wait_until(lambda: sum(e["event"] == "start" for e in read(ledger)) >= 2, 60)
    app.pause("default")
    paused_at = time.time()
    time.sleep(3.0)  # the window in which nothing may start (not synchronisation: what is measured)
    starts = [e["t"] for e in read(ledger) if e["event"] == "start"]
    late = [t - paused_at for t in starts if t > paused_at + 1.0]
    assert late == [], late
    before = len(starts)
    assert before < len(handles)
    ends = [e for e in read(ledger) if e["event"] == "end"]
    assert len(ends) >= min(before, 2)  # the running ones finished
    assert app.info(handles[-1].id).status is Status.PENDING  # type: ignore[union-attr]
    app.resume("default")
    finished(app, handles)
    assert len([e for e in read(ledger) if e["event"] == "start"]) == len(handles)
    app.close()


def test_an_expired_task_is_listed_cancelled(
    broker_url: str, ledger: Path, start_worker: Callable[..., WorkerProcess]
) -> None:
    app = runq.App(broker_url)
    doomed = app.enqueue("slow", args=[0], expires=0.2)
    kept = app.enqueue("slow", args=[0], expires=3600)
    time.sleep(0.3)  # past its deadline before any worker runs (the condition under test, not a wait)
    start_worker(broker_url, "--pool", "thread", app=APP)
    assert kept.result(timeout=60) is None
    with pytest.raises(runq.TaskCancelled):
        doomed.result(timeout=60)
    listed = subprocess.run(
        [sys.executable, "-m", "runq", "--url", broker_url, "list", "cancelled", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    [shown] = json.loads(listed.stdout)
    assert shown["id"] == doomed.id and shown["error"]["type"] == "Expired"
    assert [e for e in read(ledger) if e["task"] == doomed.id] == []  # it never ran
    app.close()
