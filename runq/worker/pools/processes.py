"""The process pool (the default): each slot is a child process (``runq.worker.child``)
that runs jobs sent over its own pipe pair; a timeout or a cancel kills the child and a
new one takes its slot.

Recycling (``max_tasks_per_child``, ``max_memory_per_child``): a child is replaced after the
task during which it reached its limit. Its replacement is started first (for a task count,
as soon as the last batch is handed over, so it imports the app while that batch runs); the
old child, idle, is then let go by closing its pipe, and exits on its own.
Without limits none of this costs a syscall."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

from runq.settings import Settings
from runq.worker import frames
from runq.worker.ended import Crashed, Ended, Failed, Finished, Stopped, TimedOut, from_frame
from runq.worker.pools import OnDone, Pool
from runq.worker.run import Job

if TYPE_CHECKING:
    from runq.app import App

BATCH_BELOW = 0.005  # seconds: jobs this short on average go to a child several at a time...
BATCH_MAX = 16  # ...at most this many per message
EXIT_GRACE = 10.0  # seconds a recycled child has to exit after its pipe closes, before SIGKILL


class _Child:
    """One child process running jobs sent over its own pipe pair (stdout stays the user's)."""

    def __init__(self, app_path: str, settings: Settings) -> None:
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runq.worker.child", app_path, str(to_child_r), str(from_child_w), str(os.getpid())],
            pass_fds=(to_child_r, from_child_w),
            cwd=os.getcwd(),
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.reader = frames.FrameReader(self.from_child)
        self.ran = 0  # jobs it answered
        self.spent = False  # its memory peaked at the limit: it runs nothing more
        # The first frame is the worker's settings (never argv: `ps` would show the URL's password).
        frames.write_frame(self.to_child, settings.to_dict())

    def read(self, job: Job) -> Ended:
        """How ``job`` ended, as the child says, or as its silence or death says."""
        answer = self.reader.read(job.timeout)
        if isinstance(answer, frames.Timeout):
            return TimedOut(job.timeout or 0.0)
        if isinstance(answer, frames.Eof):
            return Crashed(self.proc.poll())
        self.ran += 1
        if answer.data.get("recycle"):
            self.spent = True
        return from_frame(answer.data)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        os.close(self.to_child)
        os.close(self.from_child)

    def close(self) -> None:
        """Let an idle child go: EOF on its pipe ends it (exit 0, its atexit handlers run)."""
        os.close(self.to_child)
        try:
            self.proc.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
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

    def _next_batch(self, most: int = BATCH_MAX) -> list[Job]:
        """The oldest queued jobs, blocking; empty once the pool is closed. Several only
        while jobs are short (≤ 5 ms on average), never more than a fair share nor ``most``."""
        first = self._next_job()
        if first is None:
            return []
        batch = [first]
        if self._runtime < BATCH_BELOW:
            with self._lock:
                share = min(BATCH_MAX, most, -(-len(self._queued) // self.concurrency))
                while len(batch) < share and (job := next(iter(self._queued.values()), None)) is not None:
                    if not self._may_start(job):
                        break
                    self._open_run(job)
                    batch.append(job)
        return batch

    def _serve(self) -> None:
        proc, spare = self._new_child(), None
        while batch := self._next_batch(self._budget(proc)):
            if spare is None and self._last_batch(proc, batch):
                spare = self._new_child()  # imports the app while ``proc`` runs its last batch
            healthy = self._run_batch(proc, batch)
            if self._closed.is_set():
                return
            if healthy and not self._spent(proc):
                continue
            replacement, spare = spare or self._new_child(), None  # started before the old child goes
            if healthy:
                self._let_go(proc)
            else:
                self._retire(proc)
            proc = replacement
        self._retire(proc)
        if spare is not None:
            self._retire(spare)

    def _budget(self, proc: _Child) -> int:
        """How many more jobs ``proc`` may be given."""
        limit = self.settings.max_tasks_per_child
        return limit - proc.ran if limit else BATCH_MAX

    def _last_batch(self, proc: _Child, batch: list[Job]) -> bool:
        limit = self.settings.max_tasks_per_child
        return bool(limit) and proc.ran + len(batch) >= limit

    def _spent(self, proc: _Child) -> bool:
        """Whether ``proc`` reached a limit during its last batch."""
        limit = self.settings.max_tasks_per_child
        return proc.spent or (bool(limit) and proc.ran >= limit)

    def _let_go(self, proc: _Child) -> None:
        """Close a recycled child's pipe and reap it in the background: its slot goes on at once."""

        def reap() -> None:
            proc.close()
            with self._lock:
                if proc in self._children:
                    self._children.remove(proc)

        threading.Thread(target=reap, name="runq-child-exit", daemon=True).start()

    def _run_batch(self, proc: _Child, batch: list[Job]) -> bool:
        """Run ``batch`` in ``proc`` and report each job; ``False`` when the child must go."""
        with self._lock:
            for job in batch:
                self._busy[job.id] = proc
        with contextlib.suppress(OSError):  # the child is gone: the first read says so
            frames.write_frame(proc.to_child, {"jobs": [vars(job) for job in batch]})
        for index, job in enumerate(batch):
            with self._lock:
                self._running[proc] = job.id
                stopped = job.id in self._cancelled
            ended = Stopped() if stopped else proc.read(job)
            if isinstance(ended, (Finished, Failed)):
                self._runtime += 0.2 * (ended.duration - self._runtime)
                self._done(job, ended)
                if proc.spent:  # at its memory limit: it ran its last job; the rest go back
                    self._requeue(batch[index + 1 :])
                    break
                continue
            # The job overran, was cancelled, or its child died: the child goes, and the
            # jobs it had not started go back to the front of the queue.
            with contextlib.suppress(ProcessLookupError):
                proc.proc.kill()
            self._done(job, ended)
            self._requeue(batch[index + 1 :])
            with self._lock:
                self._running.pop(proc, None)
            return False
        with self._lock:
            self._running.pop(proc, None)
        return proc.proc.poll() is None

    def _done(self, job: Job, ended: Ended) -> None:
        with self._lock:
            self._busy.pop(job.id, None)
            cancelled = job.id in self._cancelled
            self._cancelled.discard(job.id)
        if not self._closed.is_set():
            self.on_done(job, Stopped() if cancelled else ended)

    def _requeue(self, jobs: list[Job]) -> None:
        """Put jobs that never started back at the front of the queue, in their order."""
        with self._lock:
            for job in jobs:
                self._busy.pop(job.id, None)
                self._open.discard(job.id)  # not run: open again when handed out again
            stopped = [job for job in jobs if job.id in self._cancelled]
            self._cancelled.difference_update(job.id for job in stopped)
            jobs = [job for job in jobs if job not in stopped]
            rest = self._queued
            self._queued = {job.id: job for job in jobs}
            self._queued.update(rest)
            self._has_jobs.notify_all()
        for job in stopped:
            self.on_done(job, Stopped())

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
        """Kill every child and reap it: a child left unreaped is a zombie (and, in a test,
        a ``ResourceWarning``). Pipes stay open: a serving thread may still read them."""
        self._close()
        with self._lock:
            children = list(self._children)
        for proc in children:
            with contextlib.suppress(ProcessLookupError):
                proc.proc.kill()
        for proc in children:
            proc.proc.wait()
