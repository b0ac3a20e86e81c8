"""Periodic tasks: schedules, once per tick across beat processes, real `runq beat` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

import runq
from runq.models import Status
from runq.schedule import Periodic
from runq.worker.beat import Beat
from tests.conftest import ROOT, WITH_POSTGRES, WorkerProcess, wait_until

BROKER_KINDS = WITH_POSTGRES  # every broker, PostgreSQL included

StartWorker = Callable[..., WorkerProcess]


class BeatProcess:
    """``runq beat tests.tasks:app`` in a subprocess, its log in a file."""

    def __init__(self, url: str, log: Path) -> None:
        self.log = log
        env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runq", "beat", "tests.tasks:app"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def started(self) -> bool:
        return "beat started" in self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[[str], BeatProcess]]:
    started: list[BeatProcess] = []

    def start(url: str) -> BeatProcess:
        beat = BeatProcess(url, tmp_path / f"beat-{len(started)}.log")
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


def ticks(app: runq.App) -> int:
    return sum(1 for task in app.list(queue="beat", limit=1000) if task.name == "tick")


# -- schedules -------------------------------------------------------------------------------------


def test_every_ticks_on_multiples_of_its_period() -> None:
    every = Periodic("t", every=30)
    assert every.next_after(1_700_000_000.0) == 1_700_000_010.0  # 1_700_000_010 is a multiple of 30
    assert every.next_after(1_700_000_010.0) == 1_700_000_040.0  # strictly after
    assert every.tick_id(1_700_000_010.0) == "1700000010000" and every.ttl(1_700_000_010.0) == 60.0


def test_cron_ticks_in_utc() -> None:
    cron = Periodic("c", cron="*/5 * * * *")
    start = datetime(2030, 1, 1, 12, 3, 20, tzinfo=timezone.utc).timestamp()
    assert cron.next_after(start) == datetime(2030, 1, 1, 12, 5, tzinfo=timezone.utc).timestamp()
    assert cron.ttl(cron.next_after(start)) == 600.0  # two periods


@pytest.mark.parametrize(
    "schedule",
    [{}, {"cron": "* * * * *", "every": 5}, {"cron": "every minute"}, {"every": 0}, {"every": "5"}],
)
def test_bad_schedules_fail_at_decoration(schedule: dict[str, object]) -> None:
    app = runq.App("sqlite:///unused.db")
    with pytest.raises(ValueError):
        app.periodic(**schedule)  # type: ignore[arg-type]
    assert app.schedules == [] and app.tasks == {}


def test_a_tick_is_taken_by_one_beat_only(app: runq.App) -> None:
    @app.periodic(every=60, name="report", queue="beat")
    def report() -> None: ...

    [entry] = app.schedules
    tick = entry.next_after(time.time())
    beats = [Beat(app), Beat(app), Beat(runq.App(app.settings.url))]
    assert [beat.fire(entry, tick) for beat in beats] == [True, False, False]
    assert [t.name for t in app.list(queue="beat")] == ["report"]
    assert beats[0].fire(entry, entry.next_after(tick))  # the next tick is new


# -- real beat processes ---------------------------------------------------------------------------


def test_two_beats_fire_once_per_tick_and_survive_one_dying(
    app: runq.App, broker_url: str, start_beat: Callable[[str], BeatProcess]
) -> None:
    beats = [start_beat(broker_url), start_beat(broker_url)]
    wait_until(lambda: all(beat.started() for beat in beats), 30)
    before = ticks(app)
    time.sleep(5)  # letting time pass is the point: 5 ticks of every=1 happen, not 10
    assert 4 <= ticks(app) - before <= 6
    beats[0].proc.send_signal(signal.SIGKILL)
    beats[0].proc.wait()
    after_kill = ticks(app)
    wait_until(lambda: ticks(app) >= after_kill + 3, 15)  # the survivor goes on ticking


def test_runq_beat_stops_on_sigterm(broker_url: str, start_beat: Callable[[str], BeatProcess]) -> None:
    beat = start_beat(broker_url)
    wait_until(beat.started, 30)
    beat.proc.send_signal(signal.SIGTERM)
    assert beat.proc.wait(timeout=10) == 0


def test_worker_with_beat_runs_the_periodic_task(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, "--pool", "thread", "--queues", "beat", "--beat")
    done = wait_until(lambda: app.list(status=Status.SUCCEEDED, queue="beat"), 30)
    assert done[0].name == "tick" and isinstance(done[0].result, float)
