"""The beat: enqueues an app's periodic tasks (runq/schedule.py) at their ticks, once per tick
however many beats run (``runq beat``, or ``runq worker --beat``)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from runq.app import App
from runq.errors import BrokerUnavailable
from runq.schedule import Periodic

log = logging.getLogger("runq.beat")


class Beat:
    """Enqueues an app's periodic tasks at their ticks, once per tick across all beats."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.entries = list(app.schedules)

    def run(self, stop: threading.Event) -> None:
        """Sleep until the next tick, fire what is due, repeat until ``stop`` is set."""
        if not self.entries:
            return
        log.info("beat started: %s", ", ".join(f"{e.name} ({e.schedule})" for e in self.entries))
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
            handle = self.app.enqueue(entry.name, list(entry.args), dict(entry.kwargs))
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
