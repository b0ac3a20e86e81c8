"""Periodic tasks: ``@app.periodic(cron=...)`` / ``@app.periodic(every=...)`` and the beat loop.

Any number of beat processes may run (``runq beat APP``, or workers started with
``--beat``): each one computes the same ticks from the schedule, sleeps until the next
one, and asks the broker for it (:meth:`Broker.take_tick`); exactly one of them gets
each tick and enqueues the task. So a beat process that dies costs nothing as long as
another runs. Ticks are points in time derived from the schedule alone, never from
when a process started: ``every=30`` ticks at every multiple of 30 s since the epoch,
and cron expressions are read in UTC. A tick missed while no beat process ran is not
replayed: a starting beat looks only forward.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import TYPE_CHECKING

from croniter import croniter

from runq.errors import BrokerUnavailable

if TYPE_CHECKING:
    from runq.app import App

log = logging.getLogger("runq.beat")
MIN_TICK_TTL = 60.0  # a taken tick is remembered at least this long (beats with skewed clocks)


@dataclass(frozen=True)
class Periodic:
    """One schedule: the task ``name`` is enqueued (without arguments) at every tick."""

    name: str
    cron: str | None = None
    every: float | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("periodic() takes cron=... or every=..., exactly one of them")
        if self.every is not None:
            if not isinstance(self.every, (int, float)) or isinstance(self.every, bool) or not self.every > 0:
                raise ValueError(f"every must be a number of seconds > 0, got {self.every!r}")
        elif not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
            raise ValueError(f"cron must be a cron expression such as '*/5 * * * *', got {self.cron!r}")

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (seconds since the epoch)."""
        if self.every is not None:
            return float((math.floor(moment / self.every) + 1) * self.every)
        start = datetime.fromtimestamp(moment, tz=timezone.utc)
        return float(croniter(str(self.cron), start).get_next(float))

    def tick_id(self, tick: float) -> str:
        """The same string in every beat process for the same tick."""
        return str(round(tick * 1000))

    def ttl(self, tick: float) -> float:
        """How long the broker remembers a taken tick: two periods, at least a minute."""
        return max(MIN_TICK_TTL, 2 * (self.next_after(tick) - tick))


class Beat:
    """Enqueues an app's periodic tasks at their ticks, once per tick across all beats."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.entries = list(app.schedules)

    def run(self, stop: threading.Event) -> None:
        """Sleep until the next tick, fire what is due, repeat until ``stop`` is set."""
        if not self.entries:
            return
        log.info("beat started: %s", ", ".join(f"{e.name} ({e.cron or f'every {e.every}s'})" for e in self.entries))
        now = time.time()
        due = {entry: entry.next_after(now) for entry in self.entries}
        while not stop.wait(max(0.0, min(due.values()) - time.time())):
            now = time.time()
            for entry, tick in due.items():
                if tick <= now:
                    self.fire(entry, tick)
                    due[entry] = entry.next_after(max(now, tick))  # missed ticks are skipped

    def fire(self, entry: Periodic, tick: float) -> bool:
        """Take the tick and enqueue the task; ``False`` when another beat had it (or no broker)."""
        try:
            if not self.app.broker.take_tick(entry.name, entry.tick_id(tick), entry.ttl(tick)):
                return False
            handle = self.app.enqueue(entry.name)
        except BrokerUnavailable as exc:
            log.warning("beat: tick of %s skipped, broker unavailable: %s", entry.name, exc)
            return False
        log.info("beat: enqueued %s (%s)", entry.name, handle.id)
        return True


def start_beat(app: App) -> threading.Event:
    """Run the beat in a daemon thread (``runq worker --beat``); set the event to stop it."""
    stop = threading.Event()
    threading.Thread(target=Beat(app).run, args=(stop,), name="runq-beat", daemon=True).start()
    return stop


def run_beat(app: App) -> int:
    """``runq beat APP``: run until SIGTERM/SIGINT; returns the exit code."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: beat stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Beat(app).run(stop)
    return 0
