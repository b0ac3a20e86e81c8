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
import queue
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

if TYPE_CHECKING:
    from runq.app import App

OnDone = Callable[[Job, RunResult | None], None]


class Pool(ABC):
    kind: str

    def __init__(self, app: App, app_path: str, concurrency: int, on_done: OnDone) -> None:
        self.app = app
        self.app_path = app_path
        self.concurrency = concurrency
        self.on_done = on_done

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Run ``job``; the worker never submits more jobs than ``concurrency`` at once."""

    @abstractmethod
    def cancel(self, task_id: str) -> None:
        """Stop the run of ``task_id`` (if it is still running) and drop its result."""

    @abstractmethod
    def terminate(self) -> None:
        """Stop everything now; runs still going are dropped without ``on_done``."""

    def timeout_result(self, job: Job) -> RunResult:
        return RunResult.failure(
            "TimeoutError",
            f"task exceeded its timeout of {job.timeout}s",
            retryable=retryable_error(self.app.tasks.get(job.name), TimeoutError),
        )


def create_pool(kind: str, app: App, app_path: str, concurrency: int, on_done: OnDone) -> Pool:
    pools: dict[str, type[Pool]] = {"process": ProcessPool, "thread": ThreadPool, "async": AsyncPool}
    return pools[kind](app, app_path, concurrency, on_done)


# -- threads ------------------------------------------------------------------------


class _Slot:
    """One pool thread; ``abandoned`` once the pool gave up on its run (timeout)."""

    def __init__(self) -> None:
        self.abandoned = False


class ThreadPool(Pool):
    kind = "thread"

    def __init__(self, app: App, app_path: str, concurrency: int, on_done: OnDone) -> None:
        super().__init__(app, app_path, concurrency, on_done)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Job, TaskContext, _Slot, float]] = {}
        self._closed = threading.Event()

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._spawn()
        threading.Thread(target=self._watch_timeouts, name="runq-thread-timeouts", daemon=True).start()

    def _spawn(self) -> None:
        threading.Thread(target=self._serve, args=(_Slot(),), name="runq-thread", daemon=True).start()

    def _serve(self, slot: _Slot) -> None:
        while (job := self._jobs.get()) is not None:
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
                    context._cancel.set()
                    del self._running[job.id]
            for job, *_ in late:
                self._spawn()
                self.on_done(job, self.timeout_result(job))

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def cancel(self, task_id: str) -> None:
        with self._lock:
            entry = self._running.get(task_id)
        if entry is not None:
            entry[1]._cancel.set()

    def terminate(self) -> None:
        self._closed.set()
        with self._lock:
            for _, context, slot, _ in self._running.values():
                slot.abandoned = True
                context._cancel.set()
            self._running.clear()
        for _ in range(self.concurrency * 2):
            self._jobs.put(None)


# -- child processes ----------------------------------------------------------------


class _Child:
    """One child process running jobs sent over its own pipe pair (stdout stays the user's)."""

    def __init__(self, app_path: str) -> None:
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

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        os.close(self.to_child)
        os.close(self.from_child)


class ProcessPool(Pool):
    kind = "process"

    def __init__(self, app: App, app_path: str, concurrency: int, on_done: OnDone) -> None:
        super().__init__(app, app_path, concurrency, on_done)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._children: list[_Child] = []
        self._busy: dict[str, tuple[_Child, list[bool]]] = {}  # task id -> (child, [cancelled])
        self._closed = threading.Event()

    def start(self) -> None:
        for _ in range(self.concurrency):
            threading.Thread(target=self._serve, name="runq-child", daemon=True).start()

    def _new_child(self) -> _Child:
        proc = _Child(self.app_path)
        with self._lock:
            self._children.append(proc)
        return proc

    def _retire(self, proc: _Child) -> None:
        with self._lock:
            if proc in self._children:
                self._children.remove(proc)
        proc.kill()

    def _serve(self) -> None:
        proc = self._new_child()
        while (job := self._jobs.get()) is not None:
            cancelled = [False]
            with self._lock:
                self._busy[job.id] = (proc, cancelled)
            result = self._run_in(proc, job)
            with self._lock:
                self._busy.pop(job.id, None)
            if result is None or cancelled[0] or proc.proc.poll() is not None:
                self._retire(proc)
                if self._closed.is_set():
                    return
                proc = self._new_child()
            if self._closed.is_set():
                return
            self.on_done(job, None if cancelled[0] else result or self.timeout_result(job))
        self._retire(proc)

    def _run_in(self, proc: _Child, job: Job) -> RunResult | None:
        """The child's answer; ``None`` on timeout; a ``WorkerCrashed`` failure if it died."""
        try:
            child.write_frame(proc.to_child, child.job_to_dict(job))
            frame = proc.reader.read(job.timeout)
        except (OSError, EOFError):
            frame = {}
        if frame is None:
            return None
        if not frame:
            code = proc.proc.poll()
            return RunResult.failure(
                "WorkerCrashed",
                f"the child process running the task died (exit code {code})",
                retryable=retryable_error(self.app.tasks.get(job.name), OSError),
            )
        return RunResult.from_dict(frame)

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def cancel(self, task_id: str) -> None:
        with self._lock:
            entry = self._busy.get(task_id)
        if entry is not None:
            entry[1][0] = True
            with contextlib.suppress(ProcessLookupError):
                entry[0].proc.kill()

    def terminate(self) -> None:
        self._closed.set()
        with self._lock:
            children = list(self._children)
        for proc in children:
            with contextlib.suppress(ProcessLookupError):
                proc.proc.kill()
        for _ in range(self.concurrency):
            self._jobs.put(None)


# -- coroutines ---------------------------------------------------------------------


class AsyncPool(Pool):
    kind = "async"

    def __init__(self, app: App, app_path: str, concurrency: int, on_done: OnDone) -> None:
        super().__init__(app, app_path, concurrency, on_done)
        self._loop = asyncio.new_event_loop()
        self._tasks: dict[str, tuple[asyncio.Task[Any], TaskContext]] = {}
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, name="runq-async", daemon=True).start()

    def submit(self, job: Job) -> None:
        asyncio.run_coroutine_threadsafe(self._run(job), self._loop)

    async def _run(self, job: Job) -> None:
        context = job.context()
        task = asyncio.current_task()
        assert task is not None
        self._tasks[job.id] = (task, context)
        result: RunResult | None
        try:
            result = await asyncio.wait_for(arun_job(self.app, job, context), job.timeout)
        except asyncio.TimeoutError:
            result = self.timeout_result(job)
        except asyncio.CancelledError:
            result = None
        finally:
            self._tasks.pop(job.id, None)
        if not self._closed:
            self.on_done(job, None if context.cancelled else result)

    def cancel(self, task_id: str) -> None:
        def stop() -> None:
            entry = self._tasks.get(task_id)
            if entry is not None:
                entry[1]._cancel.set()
                entry[0].cancel()

        self._loop.call_soon_threadsafe(stop)

    def terminate(self) -> None:
        self._closed = True

        def stop_all() -> None:
            for task, _ in self._tasks.values():
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop_all)
