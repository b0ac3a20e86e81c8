"""The thread pool: each slot is a thread; a run that overruns its timeout is abandoned
(Python cannot stop a thread) and a fresh thread takes its slot."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runq.context import TaskContext
from runq.settings import Settings
from runq.worker.ended import Stopped, TimedOut
from runq.worker.pools import OnDone, Pool
from runq.worker.run import Job, run_job

if TYPE_CHECKING:
    from runq.app import App


class _Slot:
    """One pool thread; ``abandoned`` once the pool gave up on its run (timeout)."""

    def __init__(self) -> None:
        self.abandoned = False


@dataclass(frozen=True)
class _Running:
    job: Job
    context: TaskContext
    slot: _Slot
    deadline: float


class ThreadPool(Pool):
    kind = "thread"

    def __init__(self, settings: Settings, app: App, app_path: str, on_done: OnDone) -> None:
        super().__init__(settings, app, app_path, on_done)
        self._running: dict[str, _Running] = {}

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn()
        threading.Thread(target=self._watch_timeouts, name="runq-thread-timeouts", daemon=True).start()

    def _spawn(self) -> None:
        threading.Thread(target=self._serve, args=(_Slot(),), name="runq-thread", daemon=True).start()

    def _serve(self, slot: _Slot) -> None:
        contexts: dict[str, TaskContext] = {}

        def opened(job: Job) -> None:  # (the lock held: running from the moment it leaves the queue)
            deadline = time.monotonic() + job.timeout if job.timeout else float("inf")
            context = contexts[job.id] = job.context()
            self._running[job.id] = _Running(job, context, slot, deadline)

        while (job := self._next_job(opened)) is not None:
            context = contexts.pop(job.id)
            ended = run_job(self.app, job, context)
            with self._lock:
                if slot.abandoned:
                    return  # already reported as timed out; a new thread took this slot
                self._running.pop(job.id, None)
            if not self._closed.is_set():
                self.on_done(job, Stopped() if context.cancelled else ended)

    def _watch_timeouts(self) -> None:
        while not self._closed.wait(0.05):
            now = time.monotonic()
            with self._lock:
                late = [running for running in self._running.values() if running.deadline <= now]
                for running in late:
                    running.slot.abandoned = True
                    running.context.cancel()
                    del self._running[running.job.id]
            for running in late:
                self._spawn()
                self.on_done(running.job, TimedOut(running.job.timeout or 0.0))

    def _stop_running(self, task_id: str) -> None:
        with self._lock:
            running = self._running.get(task_id)
        if running is not None:
            running.context.cancel()

    def started(self) -> set[str]:
        with self._lock:
            return set(self._running)

    def terminate(self) -> None:
        self._close()
        with self._lock:
            for running in self._running.values():
                running.slot.abandoned = True
                running.context.cancel()
            self._running.clear()
