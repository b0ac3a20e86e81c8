"""Running one task and describing what happened, the same way in every pool.

The pools decide *where* a task runs (a thread, a child process, a coroutine);
this module decides what its result or exception means: a JSON result, a
retryable error, or a final one. Retry *timing* is the worker's policy.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from runq import tracing
from runq.context import TaskContext, _current
from runq.errors import Retry

if TYPE_CHECKING:
    from runq.app import App
    from runq.tasks import Task


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
    trace: dict[str, str] | None = None  # the message's trace context (runq/tracing.py)

    def context(self) -> TaskContext:
        return TaskContext(self.id, self.name, self.queue, self.attempt)


@dataclass
class RunResult:
    """How one attempt ended: ``result`` (JSON text) when ``ok``, else ``error``.

    ``duration`` is how long the task itself ran, measured where it ran: a claimed task
    may wait in the worker before it starts, so the broker's clock cannot tell.
    """

    ok: bool
    result: str | None = None
    error: dict[str, Any] = field(default_factory=dict)
    retryable: bool = False
    retry_delay: float | None = None
    duration: float = 0.0
    trace: list[str] | None = None  # [trace_id, span_id] of the attempt's span, for the logs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(**data)

    @classmethod
    def failure(cls, kind: str, message: str, *, retryable: bool, trace: str | None = None) -> RunResult:
        return cls(False, error={"type": kind, "message": message, "traceback": trace}, retryable=retryable)


def run_job(app: App, job: Job, context: TaskContext | None = None) -> RunResult:
    """Run a job in this thread (``async def`` tasks get their own event loop)."""
    started = time.perf_counter()
    if tracing.ENABLED:
        result = tracing.consume(job, lambda: _run_job(app, job, context))
    else:
        result = _run_job(app, job, context)
    result.duration = time.perf_counter() - started
    return result


def _run_job(app: App, job: Job, context: TaskContext | None) -> RunResult:
    task = app.tasks.get(job.name)
    if task is None:
        return unknown_task(job.name)
    token = _current.set(context or job.context())
    pid = os.getpid()
    try:
        value: Any
        if task.is_async:
            value = asyncio.run(_call_async(task.fn, job))
        else:
            value = task.fn(*job.args, **job.kwargs)
        return success(value)
    except BaseException as exc:  # SPEC §8: whatever the task raises is its error (see classify)
        return classify(task, exc)
    finally:
        _current.reset(token)
        _end_if_forked(pid)


async def arun_job(app: App, job: Job, context: TaskContext) -> RunResult:
    """Run a job on the running event loop; sync tasks go to a thread so they never block it.

    ``asyncio.CancelledError`` and a timeout propagate to the pool, which owns them.
    """
    started = time.perf_counter()
    if tracing.ENABLED:
        result = await tracing.aconsume(job, lambda: _arun_job(app, job, context))
    else:
        result = await _arun_job(app, job, context)
    result.duration = time.perf_counter() - started
    return result


async def _arun_job(app: App, job: Job, context: TaskContext) -> RunResult:
    task = app.tasks.get(job.name)
    if task is None:
        return unknown_task(job.name)
    if not task.is_async:
        # Whole, result included: an exception crossing from the thread into the loop's
        # future loses its identity (a GeneratorExit raised there is replaced by another).
        return await asyncio.to_thread(_run_job, app, job, context)
    token = _current.set(context)
    pid = os.getpid()
    try:
        return success(await _call_async(task.fn, job))
    except asyncio.CancelledError as exc:
        if _cancelled_by_pool():
            raise
        return classify(task, exc)  # the task raised it itself: its error like any other
    except BaseException as exc:  # SPEC §8: whatever the task raises is its error (see classify)
        return classify(task, exc)
    finally:
        _current.reset(token)
        _end_if_forked(pid)


def _cancelled_by_pool() -> bool:
    """Whether a ``CancelledError`` is the pool stopping this run (cancel, timeout), not the
    task's own. Python 3.10 cannot tell: there, every one is taken as the pool's."""
    current = asyncio.current_task()
    cancelling = getattr(current, "cancelling", None)
    return cancelling is None or cancelling() > 0


def _end_if_forked(pid: int) -> None:
    """A task that forked and whose child returned: that child is a copy of the worker (or
    of a pool child) sharing its pipes and broker connections, and must not report the run
    as well. It exits at once, its buffers unflushed (they are its parent's)."""
    if os.getpid() != pid:
        os._exit(0)


async def _call_async(fn: Callable[..., Awaitable[Any]], job: Job) -> Any:
    return await fn(*job.args, **job.kwargs)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def success(value: Any) -> RunResult:
    """A returned value as a RunResult; one JSON cannot hold (an object, NaN, an int over
    Python's digit limit, nesting too deep to encode) fails the attempt with ``TypeError``."""
    if value is None:
        return RunResult(True, result="null")
    try:
        text = _JSON.encode(value)
    except Exception as exc:
        message = f"task result is not JSON-serialisable: {safe_message(exc)}"
        return RunResult.failure("TypeError", message, retryable=False)
    if not text.isascii() and not _utf8(text):  # a lone surrogate: escaped, JSON still holds it
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return RunResult(True, result=text)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def classify(task: Task[Any, Any], exc: BaseException) -> RunResult:
    """Anything a task raised as a RunResult: ``Retry`` always retries; others only if in
    ``retry_for`` (or when the task has no ``retry_for``, in which case every one is retried).

    Any ``BaseException`` counts (SPEC §8): ``SystemExit`` or ``KeyboardInterrupt`` from a
    task is that task's error, not the worker's. The pools run tasks off the worker's main
    thread (threads, coroutines on their own thread, children that ignore SIGINT), so a
    signal meant for the worker never arrives here as an exception.
    """
    if isinstance(exc, Retry):
        return RunResult(
            False,
            error={"type": "Retry", "message": safe_message(exc), "traceback": None},
            retryable=True,
            retry_delay=exc.delay,
        )
    error = error_record(exc)
    retryable = not task.retry_for or isinstance(exc, task.retry_for)
    return RunResult(False, error=error, retryable=retryable)


def error_record(exc: BaseException) -> dict[str, Any]:
    """The error an attempt records for ``exc``: ``{"type", "message", "traceback"}``.

    The one rule for every pool. Building it never raises, whatever the exception's
    ``__str__`` does, and its text is valid UTF-8 (a broker must be able to store it).
    """
    try:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except BaseException as failure:  # the record must be made regardless
        trace = f"(no traceback: formatting it raised {type(failure).__name__})"
    return {"type": error_type(exc), "message": safe_message(exc), "traceback": _printable(trace)}


def safe_message(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in naming what went wrong when that raises."""
    try:
        message = str(exc)
    except BaseException as failure:  # a broken __str__ is the task's bug, not ours
        return f"<{type(exc).__name__}: str() raised {type(failure).__name__}>"
    return _printable(message)


def _printable(text: str) -> str:
    return text if _utf8(text) else text.encode("utf-8", "backslashreplace").decode()


def retryable_error(task: Task[Any, Any] | None, error_class: type[BaseException]) -> bool:
    """Whether an error the pool made up (a timeout, a crashed child) may be retried."""
    return task is None or not task.retry_for or issubclass(error_class, task.retry_for)


def unknown_task(name: str) -> RunResult:
    return RunResult.failure("UnknownTask", f"no task named {name!r} is registered at this worker", retryable=False)


def error_type(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
