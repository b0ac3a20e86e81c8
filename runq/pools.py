"""Where tasks run: a pool of child processes, of threads, or of coroutines.

A pool only runs jobs and reports each one exactly once through ``on_done``;
claiming, settling, leases and retry policy belong to the worker. ``on_done``
gets ``None`` for a run that was stopped because its claim is no longer held
(cancelled, or taken over by another worker): there is nothing to settle.

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

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runq import child
from runq.context import TaskContext
from runq.runner import Job, RunResult, arun_job, retryable_error, run_job
from runq.settings import Settings

if TYPE_CHECKING:
    from runq.app import App

OnDone = Callable[[Job, RunResult | None], None]
BATCH_BELOW = 0.005  # seconds: jobs this short on average go to a child several at a time...
BATCH_MAX = 16  # ...at most this many per message


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

    @abstractmethod
    def start(self) -> None: ...

    def submit(self, job: Job) -> None:
        self.submit_many([job])

    def submit_many(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` in order, under one lock (a claim's worth at a time)."""
        if not jobs:
            return
        with self._lock:
            for job in jobs:
                self._queued[job.id] = job
            self._has_jobs.notify(len(jobs))

    def cancel(self, task_id: str) -> None:
        """Stop ``task_id`` (queued or running) and drop its result (``on_done(job, None)``)."""
        with self._lock:
            job = self._queued.pop(task_id, None)
        if job is not None:
            self.on_done(job, None)
        else:
            self._stop_running(task_id)

    def take_unstarted(self) -> list[Job]:
        """Remove and return the jobs that have not started; they get no ``on_done``."""
        with self._lock:
            jobs = list(self._queued.values())
            self._queued.clear()
        return jobs

    def _next_job(self) -> Job | None:
        """The oldest queued job, blocking; ``None`` once the pool is closed."""
        with self._lock:
            while not self._queued and not self._closed.is_set():
                self._has_jobs.wait()
            if self._closed.is_set():
                return None
            return self._queued.pop(next(iter(self._queued)))

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

    def timeout_result(self, job: Job) -> RunResult:
        result = RunResult.failure(
            "TimeoutError",
            f"task exceeded its timeout of {job.timeout}s",
            retryable=retryable_error(self.app.tasks.get(job.name), TimeoutError),
        )
        result.duration = job.timeout or 0.0
        return result


def create_pool(settings: Settings, app: App, app_path: str, on_done: OnDone) -> Pool:
    """The pool ``settings.pool`` names; the process pool hands ``settings`` on to each child."""
    pools: dict[str, type[Pool]] = {"process": ProcessPool, "thread": ThreadPool, "async": AsyncPool}
    return pools[settings.pool](settings, app, app_path, on_done)


# -- threads ------------------------------------------------------------------------


class _Slot:
    """One pool thread; ``abandoned`` once the pool gave up on its run (timeout)."""

    def __init__(self) -> None:
        self.abandoned = False


class ThreadPool(Pool):
    kind = "thread"

    def __init__(self, settings: Settings, app: App, app_path: str, on_done: OnDone) -> None:
        super().__init__(settings, app, app_path, on_done)
        self._running: dict[str, tuple[Job, TaskContext, _Slot, float]] = {}

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn()
        threading.Thread(target=self._watch_timeouts, name="runq-thread-timeouts", daemon=True).start()

    def _spawn(self) -> None:
        threading.Thread(target=self._serve, args=(_Slot(),), name="runq-thread", daemon=True).start()

    def _serve(self, slot: _Slot) -> None:
        while (job := self._next_job()) is not None:
            context = job.context()
            deadline = time.monotonic() + job.timeout if job.timeout else float("inf")
            with self._lock:
                self._running[job.id] = (job, context, slot, deadline)
            result = run_job(self.app, job, context)
            with self._lock:
                if slot.abandoned:
                    return  # already reported as timed out; a new thread took this slot
                self._running.pop(job.id, None)
            if not self._closed.is_set():
                self.on_done(job, None if context.cancelled else result)

    def _watch_timeouts(self) -> None:
        while not self._closed.wait(0.05):
            now = time.monotonic()
            with self._lock:
                late = [entry for entry in self._running.values() if entry[3] <= now]
                for job, context, slot, _ in late:
                    slot.abandoned = True
                    context.cancel()
                    del self._running[job.id]
            for job, *_ in late:
                self._spawn()
                self.on_done(job, self.timeout_result(job))

    def _stop_running(self, task_id: str) -> None:
        with self._lock:
            entry = self._running.get(task_id)
        if entry is not None:
            entry[1].cancel()

    def started(self) -> set[str]:
        with self._lock:
            return set(self._running)

    def terminate(self) -> None:
        self._close()
        with self._lock:
            for _, context, slot, _ in self._running.values():
                slot.abandoned = True
                context.cancel()
            self._running.clear()


# -- child processes ----------------------------------------------------------------


class _Child:
    """One child process running jobs sent over its own pipe pair (stdout stays the user's)."""

    def __init__(self, app_path: str, settings: Settings) -> None:
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runq.child", app_path, str(to_child_r), str(from_child_w), str(os.getpid())],
            pass_fds=(to_child_r, from_child_w),
            cwd=os.getcwd(),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.reader = child.FrameReader(self.from_child)
        # The first frame is the worker's settings (never argv: `ps` would show the URL's password).
        child.write_frame(self.to_child, settings.to_dict())

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        os.close(self.to_child)
        os.close(self.from_child)


class ProcessPool(Pool):
    """Each child runs a batch of jobs per message and answers each as it ends.

    Short tasks are handed over several at a time (see :meth:`_next_batch`), so a child
    runs them back to back instead of waiting on its worker between tasks: the
    ping-pong of two processes per task was most of this pool's cost. Each result still
    comes back on its own, so every job keeps its own hard timeout, measured from the
    end of the job before it. When the running job overruns, is cancelled or kills its
    child, the child is replaced and the batch's jobs that had not started go back to
    the front of the queue; a later job of the batch that is cancelled stops the child
    when it comes up, so it never runs to its end.
    """

    kind = "process"

    def __init__(self, settings: Settings, app: App, app_path: str, on_done: OnDone) -> None:
        super().__init__(settings, app, app_path, on_done)
        self._children: list[_Child] = []
        self._busy: dict[str, _Child] = {}  # task id -> the child its batch went to
        self._cancelled: set[str] = set()
        self._running: dict[_Child, str] = {}  # child -> the task id it runs now
        self._runtime = 1.0  # running average of a job's duration; starts "long": no batching

    def start(self) -> None:
        for _ in range(self.concurrency):
            threading.Thread(target=self._serve, name="runq-child", daemon=True).start()

    def _new_child(self) -> _Child:
        proc = _Child(self.app_path, self.settings)
        with self._lock:
            self._children.append(proc)
        return proc

    def _retire(self, proc: _Child) -> None:
        with self._lock:
            if proc in self._children:
                self._children.remove(proc)
        proc.kill()

    def _next_batch(self) -> list[Job]:
        """The oldest queued jobs, blocking; empty once the pool is closed. Several only
        while jobs are short (≤ 5 ms on average), and never more than a fair share."""
        first = self._next_job()
        if first is None:
            return []
        batch = [first]
        if self._runtime < BATCH_BELOW:
            with self._lock:
                share = min(BATCH_MAX, -(-len(self._queued) // self.concurrency))
                while len(batch) < share and self._queued:
                    batch.append(self._queued.pop(next(iter(self._queued))))
        return batch

    def _serve(self) -> None:
        proc = self._new_child()
        while batch := self._next_batch():
            if not self._run_batch(proc, batch):
                self._retire(proc)
                if self._closed.is_set():
                    return
                proc = self._new_child()
            if self._closed.is_set():
                return
        self._retire(proc)

    def _run_batch(self, proc: _Child, batch: list[Job]) -> bool:
        """Run ``batch`` in ``proc`` and report each job; ``False`` when the child must go."""
        with self._lock:
            for job in batch:
                self._busy[job.id] = proc
        with contextlib.suppress(OSError):  # the child is gone: the first read says so
            child.write_frame(proc.to_child, {"jobs": [child.job_to_dict(job) for job in batch]})
        for index, job in enumerate(batch):
            with self._lock:
                self._running[proc] = job.id
                stopped = job.id in self._cancelled
            result, alive = (None, False) if stopped else self._read(proc, job)
            if alive:
                self._done(job, result)
                continue
            # The job overran, was cancelled, or its child died: the child goes, and the
            # jobs it had not started go back to the front of the queue.
            with contextlib.suppress(ProcessLookupError):
                proc.proc.kill()
            self._done(job, result)
            self._requeue(batch[index + 1 :])
            with self._lock:
                self._running.pop(proc, None)
            return False
        with self._lock:
            self._running.pop(proc, None)
        return proc.proc.poll() is None

    def _read(self, proc: _Child, job: Job) -> tuple[RunResult | None, bool]:
        """The child's answer for ``job``, and whether the child may go on: ``(None, False)``
        when the job overran its timeout, a ``WorkerCrashed`` failure when the child died."""
        try:
            frame = proc.reader.read(job.timeout)
        except (OSError, EOFError):
            frame = {}
        if frame is None:
            return None, False
        if not frame:
            code = proc.proc.poll()
            crashed = RunResult.failure(
                "WorkerCrashed",
                f"the child process running the task died (exit code {code})",
                retryable=retryable_error(self.app.tasks.get(job.name), OSError),
            )
            return crashed, False
        result = RunResult.from_dict(frame)
        self._runtime += 0.2 * (result.duration - self._runtime)
        return result, True

    def _done(self, job: Job, result: RunResult | None) -> None:
        with self._lock:
            self._busy.pop(job.id, None)
            cancelled = job.id in self._cancelled
            self._cancelled.discard(job.id)
        if not self._closed.is_set():
            self.on_done(job, None if cancelled else result or self.timeout_result(job))

    def _requeue(self, jobs: list[Job]) -> None:
        """Put jobs that never started back at the front of the queue, in their order."""
        with self._lock:
            for job in jobs:
                self._busy.pop(job.id, None)
            stopped = [job for job in jobs if job.id in self._cancelled]
            self._cancelled.difference_update(job.id for job in stopped)
            jobs = [job for job in jobs if job not in stopped]
            rest = self._queued
            self._queued = {job.id: job for job in jobs}
            self._queued.update(rest)
            self._has_jobs.notify_all()
        for job in stopped:
            self.on_done(job, None)

    def _stop_running(self, task_id: str) -> None:
        with self._lock:
            proc = self._busy.get(task_id)
            if proc is None:
                return
            self._cancelled.add(task_id)
            running = self._running.get(proc) == task_id
        if running:
            with contextlib.suppress(ProcessLookupError):
                proc.proc.kill()

    def started(self) -> set[str]:
        with self._lock:  # a batch's later jobs have not started: only each child's current one
            return set(self._running.values())

    def terminate(self) -> None:
        self._close()
        with self._lock:
            children = list(self._children)
        for proc in children:
            with contextlib.suppress(ProcessLookupError):
                proc.proc.kill()


# -- coroutines ---------------------------------------------------------------------


class AsyncPool(Pool):
    kind = "async"

    def __init__(self, settings: Settings, app: App, app_path: str, on_done: OnDone) -> None:
        super().__init__(settings, app, app_path, on_done)
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._tasks: dict[str, tuple[asyncio.Task[Any], TaskContext]] = {}

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, name="runq-async", daemon=True).start()

    def submit_many(self, jobs: list[Job]) -> None:
        super().submit_many(jobs)
        for job in jobs:
            asyncio.run_coroutine_threadsafe(self._run(job), self._loop)

    async def _run(self, job: Job) -> None:
        async with self._slots:
            with self._lock:
                if self._queued.pop(job.id, None) is None:
                    return  # cancelled or handed back before it started
            context = job.context()
            task = asyncio.current_task()
            assert task is not None
            with self._lock:
                self._tasks[job.id] = (task, context)
            result: RunResult | None
            try:
                result = await asyncio.wait_for(arun_job(self.app, job, context), job.timeout)
            except asyncio.TimeoutError:
                result = self.timeout_result(job)
            except asyncio.CancelledError:
                result = None
            finally:
                with self._lock:
                    self._tasks.pop(job.id, None)
        if not self._closed.is_set():
            self.on_done(job, None if context.cancelled else result)

    def _stop_running(self, task_id: str) -> None:
        def stop() -> None:
            entry = self._tasks.get(task_id)
            if entry is not None:
                entry[1].cancel()
                entry[0].cancel()

        self._loop.call_soon_threadsafe(stop)

    def started(self) -> set[str]:
        with self._lock:
            return set(self._tasks)

    def terminate(self) -> None:
        self._close()

        def stop_all() -> None:
            for task, _ in self._tasks.values():
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop_all)
