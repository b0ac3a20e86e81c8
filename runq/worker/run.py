"""Running one task, the same way in every pool: one algorithm, a sync and an async edge.

The pools decide *where* a task runs (a thread, a child process, a coroutine); this
module runs it and says how it ended: :class:`~runq.worker.ended.Finished` with its
JSON result, or :class:`~runq.worker.ended.Failed` with its error. Any
``BaseException`` a task raises (``SystemExit``, ``KeyboardInterrupt``, an exception
whose ``str()`` raises) is that attempt's error, so no task can take its pool down.
What an end *means* (retry, fail, succeed) is :mod:`runq.worker.policy`'s.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from runq.context import TaskContext, _current
from runq.errors import ErrorKind, Retry, SoftTimeout, error_type, printable, retries_on, safe_str
from runq.options import unknown_name
from runq.worker import soft
from runq.worker.ended import Error, Failed, Finished
from runq.worker.progress import reporting

if TYPE_CHECKING:
    from runq.brokers.base import Broker
    from runq.observe import Observers
    from runq.tasks import Task


class Registry(Protocol):
    """What running a task needs of its App: the tasks, the middleware, and the broker its
    progress goes to (the App is one; the runtime never imports app.py, so ``app.drain()``
    can use it)."""

    tasks: dict[str, Task[Any, Any]]

    @property
    def observers(self) -> Observers: ...

    @property
    def broker(self) -> Broker: ...


@dataclass(frozen=True)
class Job:
    """What a pool needs to run one claimed task (sent as JSON to process-pool children)."""

    id: str
    name: str
    queue: str
    attempt: int
    args: list[Any]
    kwargs: dict[str, Any]
    timeout: float | None = None
    trace: dict[str, str] | None = None  # the message's trace context (runq/observe/tracing.py)
    soft_timeout: float | None = None  # runq.SoftTimeout raised inside the task then (runq/worker/soft.py)
    token: str | None = None  # the claim's fencing token: its progress reports carry it

    def context(self) -> TaskContext:
        return TaskContext(self.id, self.name, self.queue, self.attempt, self.trace)


def run_job(app: Registry, job: Job, context: TaskContext | None = None) -> Finished | Failed:
    """Run a job in this thread (an ``async def`` task gets an event loop of its own)."""
    task = app.tasks.get(job.name)
    if task is None:
        return unknown_task(app, job.name)
    attempt = _Attempt(app, job, context or job.context())
    try:
        if job.soft_timeout is not None:
            value = _call_soft(task, job, job.soft_timeout)
        else:
            value = asyncio.run(_call_async(task.fn, job)) if task.is_async else task.fn(*job.args, **job.kwargs)
    except BaseException as exc:  # any exception of the task is its attempt's error
        attempt.ended(failed(task, exc), exc)
    else:
        attempt.ended(*finished(value))
    finally:
        attempt.leave()
    if attempt.progress is not None and attempt.progress.owed:
        attempt.progress.flush()
    return attempt.result()


async def arun_job(app: Registry, job: Job, context: TaskContext) -> Finished | Failed:
    """Run a job on the running event loop. A sync task runs whole in a thread (the loop never
    blocks, and its exception never crosses into the loop, where a ``GeneratorExit`` would lose
    its identity). ``asyncio.CancelledError`` propagates: the async pool owns cancellation."""
    task = app.tasks.get(job.name)
    if task is None:
        return unknown_task(app, job.name)
    if not task.is_async:
        return await asyncio.to_thread(run_job, app, job, context)
    attempt = _Attempt(app, job, context)
    try:
        if job.soft_timeout is not None:
            value = await soft.within(_call_async(task.fn, job), job.soft_timeout)
        else:
            value = await _call_async(task.fn, job)
    except asyncio.CancelledError as exc:
        attempt.observers.end(context, exc)
        raise
    except BaseException as exc:  # any exception of the task is its attempt's error
        attempt.ended(failed(task, exc), exc)
    else:
        attempt.ended(*finished(value))
    finally:
        attempt.leave()
    if attempt.progress is not None and attempt.progress.owed:
        await asyncio.to_thread(attempt.progress.flush)  # the loop never waits on the broker
    return attempt.result()


class _Attempt:
    """What surrounds a task's body, the same for the sync and the async edge: the duration,
    ``runq.current()``, progress, run-side middleware, and the fork guard."""

    __slots__ = ("_end", "_error", "_token", "context", "observers", "pid", "progress", "started")

    def __init__(self, app: Registry, job: Job, context: TaskContext) -> None:
        self.started = time.perf_counter()
        self.context = context
        self.observers = app.observers
        self.pid = _pid
        self.progress = reporting(app, job.id, job.token, context)
        self._token = _current.set(context)
        self._end: Finished | Failed | None = None
        self._error: BaseException | None = None
        if self.observers.runs:
            self.observers.start(context)

    def ended(self, end: Finished | Failed, error: BaseException | None) -> None:
        self._end, self._error = end, error

    def leave(self) -> None:
        _current.reset(self._token)
        _end_if_forked(self.pid)

    def result(self) -> Finished | Failed:
        """Tell run-side middleware how the body ended; the end carries their notes and the
        duration (built anew rather than with ``dataclasses.replace``: microseconds per task)."""
        end, context = self._end, self.context
        assert end is not None, "result() before ended()"
        if self.observers.runs:
            self.observers.end(context, self._error)
        duration = time.perf_counter() - self.started
        notes = dict(context.notes) if context.notes else _NO_NOTES
        if isinstance(end, Finished):
            return Finished(end.result, duration, notes)
        return Failed(end.error, end.retryable, end.retry_delay, duration, notes)


_NO_NOTES: Mapping[str, str] = MappingProxyType({})
_NULL: tuple[Finished, None] = (Finished("null", 0.0, _NO_NOTES), None)  # what a task returning None ends with


_pid = os.getpid()  # this process's id, kept current by the hook below


def _forked() -> None:
    global _pid
    _pid = os.getpid()


# A run reads the pid twice. os.getpid() is a system call, made with the GIL held: the two cost
# ~0.6 µs per task (a run's own path without them: ~4.7 µs), and each is a point where the thread
# holding the GIL may be switched out. os.fork() runs this hook in the child before anything
# else, and so does PyOS_AfterFork_Child(), which C code that forks and goes on running Python in
# the child must call (it also remakes the GIL's state): no fork that returns to a task misses it.
os.register_at_fork(after_in_child=_forked)


def _end_if_forked(pid: int) -> None:
    """A task that forked and whose child returned: that child is a copy of the worker (or of
    a pool child) sharing its pipes and broker connections, and must not report the run as
    well. It exits at once, its buffers unflushed (they are its parent's)."""
    if _pid != pid:
        os._exit(0)


def _call_soft(task: Task[Any, Any], job: Job, seconds: float) -> Any:
    """The body under its soft timeout: a coroutine's own loop turns its cancellation into
    ``SoftTimeout``; a function gets it from a signal or an asynchronous exception."""
    if task.is_async:
        return asyncio.run(soft.within(_call_async(task.fn, job), seconds))
    with soft.limit(seconds):
        return task.fn(*job.args, **job.kwargs)


async def _call_async(fn: Callable[..., Awaitable[Any]], job: Job) -> Any:
    return await fn(*job.args, **job.kwargs)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def finished(value: Any) -> tuple[Finished | Failed, BaseException | None]:
    """A returned value as its JSON result; a value JSON cannot hold fails the attempt for
    good (with the encoder's error, for on_end)."""
    if value is None:
        return _NULL
    try:
        text = _JSON.encode(value)
    except Exception as exc:  # TypeError, ValueError (NaN), RecursionError, an int over the digit limit...
        message = f"task result is not JSON-serialisable: {safe_str(exc)}"
        return Failed(Error("TypeError", message), retryable=False), exc
    if not text.isascii() and not _utf8(text):  # a lone surrogate: escaped, so a broker can store it
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return Finished(text), None


def failed(task: Task[Any, Any], exc: BaseException) -> Failed:
    """An exception raised by ``task`` as its attempt's error."""
    if isinstance(exc, Retry):
        return Failed(Error(ErrorKind.RETRY, safe_str(exc)), retryable=True, retry_delay=exc.delay)
    if isinstance(exc, SoftTimeout):  # recorded bare, as runq's own (its traceback: where the task was)
        error = Error(ErrorKind.SOFT_TIMEOUT, safe_str(exc), _format(exc))
        return Failed(error, retryable=retries_on(task.retry_for, SoftTimeout))
    error = Error(error_type(exc), safe_str(exc), _format(exc))
    return Failed(error, retryable=retries_on(task.retry_for, type(exc)))


def unknown_task(app: Registry, name: str) -> Failed:
    """A name this worker has no task for; the message names the closest ones it has."""
    return Failed(Error(ErrorKind.UNKNOWN_TASK, unknown_name(name, app.tasks, "at this worker")), retryable=False)


def _format(exc: BaseException) -> str:
    try:
        return printable("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except BaseException as failure:  # the record must be made regardless
        return f"(no traceback: formatting it raised {type(failure).__name__})"


def _utf8(text: str) -> bool:
    return printable(text) is text
