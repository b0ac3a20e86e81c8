"""The async pool: one event loop in its own thread; each slot is a coroutine, and a
timeout or a cancel cancels it."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from runq.context import TaskContext
from runq.errors import retries_on
from runq.settings import Settings
from runq.worker.ended import Ended, Error, Failed, Stopped, TimedOut
from runq.worker.pools import OnDone, Pool
from runq.worker.run import Job, arun_job

if TYPE_CHECKING:
    from runq.app import App


class AsyncPool(Pool):
    kind = "async"

    def __init__(self, settings: Settings, app: App, app_path: str, on_done: OnDone) -> None:
        super().__init__(settings, app, app_path, on_done)
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._tasks: dict[str, tuple[asyncio.Task[Any], TaskContext]] = {}
        self._unblocked = asyncio.Event()  # set on the loop when a run may start again

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, name="runq-async", daemon=True).start()

    def submit_many(self, jobs: list[Job], claimed_at: float) -> None:
        super().submit_many(jobs, claimed_at)
        for job in jobs:
            asyncio.run_coroutine_threadsafe(self._run(job), self._loop)

    def _woken(self) -> None:
        self._loop.call_soon_threadsafe(self._unblocked.set)

    async def _run(self, job: Job) -> None:
        async with self._slots:
            while True:
                with self._lock:
                    if job.id not in self._queued:
                        return  # cancelled or handed back before it started
                    if self._may_start(job):
                        self._open_run(job)
                        break
                    self._unblocked.clear()
                await self._unblocked.wait()
            context = job.context()
            task = asyncio.current_task()
            assert task is not None
            with self._lock:
                self._tasks[job.id] = (task, context)
            ended: Ended
            try:
                ended = await asyncio.wait_for(arun_job(self.app, job, context), job.timeout)
            except asyncio.TimeoutError:
                ended = TimedOut(job.timeout or 0.0)
            except asyncio.CancelledError:
                # Ours (a cancel, or shutdown) stops the run; a task's own CancelledError is its error.
                if context.cancelled or self._closed.is_set():
                    ended = Stopped()
                else:
                    task_def = self.app.tasks.get(job.name)
                    retry_for = task_def.retry_for if task_def is not None else ()
                    error = Error("CancelledError", "the task raised asyncio.CancelledError")
                    ended = Failed(error, retryable=retries_on(retry_for, asyncio.CancelledError))
            finally:
                with self._lock:
                    self._tasks.pop(job.id, None)
        if not self._closed.is_set():
            self.on_done(job, Stopped() if context.cancelled else ended)

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
