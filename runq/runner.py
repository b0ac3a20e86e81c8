"""Running one task and describing what happened, the same way in every pool.

The pools decide *where* a task runs (a thread, a child process, a coroutine);
this module decides what its result or exception means: a JSON result, a
retryable error, or a final one. Retry *timing* is the worker's policy.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from runq import tracing
from runq.context import TaskContext, _current
from runq.errors import Retry
from runq.options import unknown_name

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
        return unknown_task(job.name, app.tasks)
    token = _current.set(context or job.context())
    try:
        value: Any
        if task.is_async:
            value = asyncio.run(_call_async(task.fn, job))
        else:
            value = task.fn(*job.args, **job.kwargs)
    except Exception as exc:
        return classify(task, exc)
    finally:
        _current.reset(token)
    return success(value)


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
        return unknown_task(job.name, app.tasks)
    token = _current.set(context)
    try:
        value: Any
        if task.is_async:
            value = await _call_async(task.fn, job)
        else:
            value = await asyncio.to_thread(_call_in_context, context, task.fn, job)
    except Exception as exc:
        return classify(task, exc)
    finally:
        _current.reset(token)
    return success(value)


def _call_in_context(context: TaskContext, fn: Callable[..., Any], job: Job) -> Any:
    token = _current.set(context)
    try:
        return fn(*job.args, **job.kwargs)
    finally:
        _current.reset(token)


async def _call_async(fn: Callable[..., Awaitable[Any]], job: Job) -> Any:
    return await fn(*job.args, **job.kwargs)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def success(value: Any) -> RunResult:
    if value is None:
        return RunResult(True, result="null")
    try:
        text = _JSON.encode(value)
    except (TypeError, ValueError) as exc:
        return RunResult.failure("TypeError", f"task result is not JSON-serialisable: {exc}", retryable=False)
    return RunResult(True, result=text)


def classify(task: Task[Any, Any], exc: Exception) -> RunResult:
    """An exception as a RunResult: ``Retry`` always retries; others only if in ``retry_for``
    (or when the task has no ``retry_for``, in which case every exception is retried)."""
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, Retry):
        return RunResult(
            False,
            error={"type": "Retry", "message": str(exc), "traceback": None},
            retryable=True,
            retry_delay=exc.delay,
        )
    retryable = not task.retry_for or isinstance(exc, task.retry_for)
    return RunResult.failure(error_type(exc), str(exc), retryable=retryable, trace=trace)


def retryable_error(task: Task[Any, Any] | None, error_class: type[BaseException]) -> bool:
    """Whether an error the pool made up (a timeout, a crashed child) may be retried."""
    return task is None or not task.retry_for or issubclass(error_class, task.retry_for)


def unknown_task(name: str, known: Iterable[str] = ()) -> RunResult:
    return RunResult.failure("UnknownTask", unknown_name(name, known, "at this worker"), retryable=False)


def error_type(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
