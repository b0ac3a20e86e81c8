"""Progress of running tasks (``runq.current().progress()``), coalesced on its way to the broker.

One :class:`ProgressWriter` per process and broker, wherever the task runs: a worker
running thread- or async-pool tasks, a process-pool child (which has the App, hence the
broker, itself), or the thread calling ``app.drain()``. A task's call only records its
latest value and returns (it never waits on the broker, so an async task never blocks its
loop); the writer's thread sends it: the first report of a run at once, then at most one per
:data:`INTERVAL` per run, the latest value winning, all runs due at once in one
:meth:`~runq.brokers.base.Broker.progress` call. When a run ends, :meth:`ProgressWriter.flush`
sends its last value, if not sent yet, before the outcome is reported: the final progress is
never lost to a settle that overtook it.

Every report carries its claim's token, so the broker drops one from a stale attempt. A
broker error drops the update (logged at debug): progress never fails a task. A task that
never reports costs nothing: no writer, no thread, no connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from runq.brokers.base import Broker
from runq.context import TaskContext
from runq.models import ProgressReport

log = logging.getLogger("runq.progress")

INTERVAL = 0.25  # seconds between two writes of one run's progress
IDLE = 10.0  # the writer's thread ends after this long with nothing to send
FORGET = 60.0  # a run not flushed (its thread was abandoned) is forgotten this long after its last write

Key = tuple[str, str]  # (task id, claim token): one run


@dataclass
class _Run:
    latest: ProgressReport | None = None  # reported, not sent yet
    sent_at: float = -INTERVAL  # monotonic time of its last write
    sending: bool = False  # a write of this run is on its way


class ProgressWriter:
    """The runs of one process reporting progress to one broker, and the thread that sends it."""

    def __init__(self, broker: Callable[[], Broker]) -> None:
        self._broker = broker  # called on the first write only: a task that never reports connects nothing
        self._cond = threading.Condition()
        self._runs: dict[Key, _Run] = {}
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def report(self, report: ProgressReport) -> None:
        """Record the latest value of a run; the thread sends it when its turn comes."""
        with self._cond:
            if self._pid != os.getpid():  # a task that forked: its thread is the parent's
                self._pid, self._runs, self._thread = os.getpid(), {}, None
            run = self._runs.setdefault((report.id, report.token), _Run())
            run.latest = report
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="runq-progress", daemon=True)
                self._thread.start()
            self._cond.notify()

    def owes(self, task_id: str, token: str) -> bool:
        """Whether :meth:`flush` has anything to do for this run (cheap, never blocks)."""
        with self._cond:
            return (task_id, token) in self._runs

    def flush(self, task_id: str, token: str) -> None:
        """The run ended: send its last value now (waiting for a write already on its way), so it
        is stored before the outcome is settled. In the caller's thread."""
        with self._cond:
            run = self._runs.get((task_id, token))
            if run is None:
                return
            while run.sending:
                self._cond.wait()
            del self._runs[(task_id, token)]
            latest, run.latest = run.latest, None
        if latest is not None:
            self._write([latest])

    def _serve(self) -> None:
        while True:
            with self._cond:
                due = self._due()
                if due is None:
                    self._thread = None
                    return
                for run in due:
                    run.sending = True
                reports = [run.latest for run in due if run.latest is not None]
                sent = time.monotonic()
                for run in due:
                    run.latest, run.sent_at = None, sent
            self._write(reports)
            with self._cond:
                for run in due:
                    run.sending = False
                self._cond.notify_all()

    def _due(self) -> list[_Run] | None:
        """The runs whose report may go now, waiting (lock held) until one may; ``None``: idle
        for :data:`IDLE` seconds, the thread ends."""
        idle_until = time.monotonic() + IDLE
        while True:
            now = time.monotonic()
            for key in [k for k, r in self._runs.items() if r.latest is None and now - r.sent_at > FORGET]:
                del self._runs[key]
            waiting = [run for run in self._runs.values() if run.latest is not None and not run.sending]
            due = [run for run in waiting if now - run.sent_at >= INTERVAL]
            if due:
                return due
            if not waiting and now >= idle_until:
                return None
            next_turn = min((run.sent_at + INTERVAL for run in waiting), default=idle_until)
            self._cond.wait(max(0.0, next_turn - now))

    def _write(self, reports: list[ProgressReport]) -> None:
        try:
            self._broker().progress(reports)
        except Exception as exc:  # an outage or a bug: the update is dropped, the task goes on
            log.debug("progress of %s not stored: %s", ", ".join(r.id for r in reports), exc)


class Connected(Protocol):
    """What progress needs of the App: its broker (connected on first use)."""

    @property
    def broker(self) -> Broker: ...


_writers: weakref.WeakKeyDictionary[Connected, ProgressWriter] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def writer_for(app: Connected) -> ProgressWriter:
    """This process's writer for ``app``'s broker."""
    with _lock:
        writer = _writers.get(app)
        if writer is None:
            writer = _writers[app] = ProgressWriter(lambda: app.broker)
        return writer


class RunProgress:
    """One run's end of the writer: what its ``runq.current().progress()`` calls, and the flush
    at its end. The writer is found on the first report only."""

    __slots__ = ("_writer", "app", "task_id", "token")

    def __init__(self, app: Connected, task_id: str, token: str) -> None:
        self.app, self.task_id, self.token = app, task_id, token
        self._writer: ProgressWriter | None = None

    def report(self, value: float | None, message: str | None) -> None:
        if self._writer is None:
            self._writer = writer_for(self.app)
        self._writer.report(ProgressReport(self.task_id, self.token, value, message))

    @property
    def owed(self) -> bool:
        """Whether :meth:`flush` has anything to do (cheap: nothing at all for a silent run)."""
        return self._writer is not None and self._writer.owes(self.task_id, self.token)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush(self.task_id, self.token)


def reporting(app: Connected, task_id: str, token: str | None, context: TaskContext) -> RunProgress | None:
    """Connect ``context.progress()`` of a claimed run (one with a token) to the broker."""
    if token is None:
        return None
    run = RunProgress(app, task_id, token)
    context._progress = run.report
    return run


__all__ = ["INTERVAL", "ProgressWriter", "RunProgress", "reporting", "writer_for"]
