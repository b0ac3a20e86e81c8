"""Where tasks run: a pool of child processes, of threads, or of coroutines.

A pool only runs jobs and reports each one exactly once through ``on_done``, with how
it ended (:mod:`runq.worker.ended`); claiming, settling, leases and retry policy belong
to the worker.

How each pool stops a run (SPEC §3):

=========  ==========================  ===============================================
pool       timeout                     cancel
=========  ==========================  ===============================================
process    child killed and replaced   child killed and replaced
thread     thread abandoned, replaced  ``runq.current().cancelled`` set, result dropped
async      coroutine cancelled         coroutine cancelled
=========  ==========================  ===============================================
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from runq.settings import Settings
from runq.worker.ended import Ended, Stopped
from runq.worker.run import Job

if TYPE_CHECKING:
    from runq.app import App

OnDone = Callable[[Job, Ended], None]


class Pool(ABC):
    """Runs up to ``concurrency`` jobs at once; jobs submitted beyond that wait in order.

    The worker claims a little ahead (prefetch) so a slot never idles while the next
    claim is on its way; the jobs still waiting here are what a graceful shutdown
    hands back at once (:meth:`take_unstarted`).
    """

    kind: str

    def __init__(self, settings: Settings, app: App, app_path: str, on_done: OnDone) -> None:
        self.settings = settings
        self.app = app
        self.app_path = app_path
        self.concurrency = settings.effective_concurrency
        self.on_done = on_done
        self._lock = threading.Lock()
        self._has_jobs = threading.Condition(self._lock)
        self._queued: dict[str, Job] = {}  # submitted, not started; insertion-ordered
        self._closed = threading.Event()
        # Runs handed to a slot and not yet settled by the worker (running, or finished with their
        # outcome on its way to the broker). No run starts while there are this many, so a SIGKILL
        # re-runs at most that many finished tasks (docs/reliability.md).
        self._open: set[str] = set()
        self._most_open = self.concurrency + settings.settle_batch
        # When each claim's lease was last known to hold (monotonic): sent its claim, or a renewal
        # of it since. One unconfirmed for half a lease (the worker was frozen, or cut off from the
        # broker) may have been taken over: it starts only once a renewal of it says it is ours.
        self._confirmed: dict[str, float] = {}
        self._stale_after = settings.lease / 2
        self._blocked = False  # a slot waits for room or a renewal: wake it when either comes

    @abstractmethod
    def start(self) -> None: ...

    def submit_many(self, jobs: list[Job], claimed_at: float) -> None:
        """Queue ``jobs`` in order, under one lock (a claim's worth at a time); ``claimed_at``:
        when their claim was sent (``time.monotonic()``)."""
        if not jobs:
            return
        with self._lock:
            for job in jobs:
                self._queued[job.id] = job
                self._confirmed[job.id] = claimed_at
            self._has_jobs.notify(len(jobs))

    def settled(self, task_ids: Collection[str]) -> None:
        """The worker settled (or dropped) these claims: their runs are no longer open."""
        with self._lock:
            self._open.difference_update(task_ids)
            for task_id in task_ids:
                self._confirmed.pop(task_id, None)
            self._unblock()

    def renewed(self, task_ids: Collection[str], sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (monotonic) kept these claims (those it found gone the
        worker cancels instead). A claim sent before it but received after is not among them."""
        with self._lock:
            for task_id in task_ids:
                if task_id in self._confirmed:
                    self._confirmed[task_id] = sent_at
            self._unblock()

    def _unblock(self) -> None:
        """Wake the slots waiting for room or a renewal (the lock held)."""
        if self._blocked:
            self._blocked = False
            self._has_jobs.notify_all()
            self._woken()

    def _woken(self) -> None:  # noqa: B027 (a hook: only the async pool needs it)
        """Called (the lock held) when waiting slots are woken; the async pool wakes its coroutines."""

    def _may_start(self, job: Job) -> bool:
        """Whether ``job`` may start now (the lock held): there is room for its run, and its claim
        was confirmed within half a lease. Otherwise the waiting slot is woken by :meth:`settled`
        or :meth:`renewed`."""
        confirmed = self._confirmed.get(job.id, float("-inf"))
        if len(self._open) < self._most_open and time.monotonic() - confirmed < self._stale_after:
            return True
        self._blocked = True
        return False

    def _open_run(self, job: Job) -> None:
        """``job`` leaves the queue for a slot (the lock held)."""
        del self._queued[job.id]
        self._open.add(job.id)

    def cancel(self, task_id: str) -> None:
        """Stop ``task_id`` (queued or running); it is reported :class:`Stopped`."""
        with self._lock:
            job = self._queued.pop(task_id, None)
        if job is not None:  # (the worker forgets it: settled() drops what the pool kept)
            self.on_done(job, Stopped())
        else:
            self._stop_running(task_id)

    def take_unstarted(self, queues: Collection[str] | None = None) -> list[Job]:
        """Remove and return the jobs that have not started (of ``queues`` only, when given);
        they get no ``on_done``."""
        with self._lock:
            jobs = [job for job in self._queued.values() if queues is None or job.queue in queues]
            for job in jobs:
                del self._queued[job.id]
        return jobs

    def _next_job(self, opened: Callable[[Job], None] | None = None) -> Job | None:
        """The oldest queued job, once it may start (:meth:`_may_start`; it is then open, and
        ``opened`` is called with it under the same lock); blocking; ``None`` once the pool is closed."""
        with self._lock:
            while not self._closed.is_set():
                job = next(iter(self._queued.values()), None)
                if job is not None and self._may_start(job):
                    self._open_run(job)
                    if opened is not None:
                        opened(job)
                    return job
                self._has_jobs.wait()
            return None

    def _close(self) -> None:
        with self._lock:
            self._closed.set()
            self._has_jobs.notify_all()

    @abstractmethod
    def _stop_running(self, task_id: str) -> None: ...

    @abstractmethod
    def started(self) -> set[str]:
        """The ids of the jobs running now: started, not finished (claimed ahead and still
        queued here is not running)."""

    @abstractmethod
    def terminate(self) -> None:
        """Stop everything now; runs still going are dropped without ``on_done``."""


def create_pool(settings: Settings, app: App, app_path: str, on_done: OnDone) -> Pool:
    """The pool ``settings.pool`` names; the process pool hands ``settings`` on to each child."""
    from runq.worker.pools.coroutines import AsyncPool
    from runq.worker.pools.processes import ProcessPool
    from runq.worker.pools.threads import ThreadPool

    pools: dict[str, type[Pool]] = {"process": ProcessPool, "thread": ThreadPool, "async": AsyncPool}
    return pools[settings.pool](settings, app, app_path, on_done)
