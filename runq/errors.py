"""Every error runq raises, in one tree.

    RunqError
    ├── BrokerUnavailable      the broker could not be reached within connect_timeout
    ├── TaskFailed             result() of a task that ended `failed`
    ├── TaskCancelled          result() of a task that ended `cancelled`
    ├── TaskNotFound           an id the broker does not know (expired, purged or never existed)
    └── Retry                  raised *inside* a task to ask for another attempt

    SoftTimeout                raised by runq *inside* a task at its ``soft_timeout``

    TimeoutError (the builtin) is raised by Handle.result() when the wait runs out,
    and is the error type recorded for an attempt killed by its hard timeout.

Errors recorded on a task (``TaskInfo.error["type"]``) that are not Python exceptions
of the task itself are the :class:`ErrorKind` values.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorKind(str, enum.Enum):
    """The error types runq itself records on a task, beside the task's own exceptions.

    The brokers' Lua and SQL write ``WORKER_LOST`` with this same text.
    """

    WORKER_LOST = "WorkerLost"  # the lease expired: the worker died or stalled
    WORKER_CRASHED = "WorkerCrashed"  # the process-pool child running the task died
    TIMEOUT = "TimeoutError"  # the task overran its hard timeout and was stopped
    UNKNOWN_TASK = "UnknownTask"  # no task of that name at the worker
    MALFORMED_MESSAGE = "MalformedMessage"  # a payload that is not runq JSON (the raw text is kept)
    BAD_SIGNATURE = "BadSignature"  # a worker with signing keys refused it, never ran it (raw text kept)
    DEPENDENCY_FAILED = "DependencyFailed"  # a workflow step's parent did not succeed
    RETRY = "Retry"  # the task raised runq.Retry
    SOFT_TIMEOUT = "SoftTimeout"  # the task reached its soft_timeout and did not catch runq.SoftTimeout
    EXPIRED = "Expired"  # not started before its ``expires`` deadline: ended cancelled (SPEC §9)
    CANCELLED = "Cancelled"  # cancelled by a call (``cancel``), before or while it ran

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class RunqError(Exception):
    """Base class of every runq error, so callers can catch runq's failures in one place."""


class BrokerUnavailable(RunqError):
    """The broker did not answer within ``connect_timeout``; nothing was enqueued."""


class TaskNotFound(RunqError, LookupError):
    """No task with this id exists (it may have expired after ``result_ttl`` or been purged)."""


class TaskFailed(RunqError):
    """The task ended ``failed``; carries the remote error's type, message and traceback."""

    def __init__(self, task_id: str, error: dict[str, Any] | None) -> None:
        error = error or {}
        self.task_id = task_id
        self.type: str = str(error.get("type", "Error"))
        self.message: str = str(error.get("message", ""))
        self.traceback: str | None = error.get("traceback")
        super().__init__(f"task {task_id} failed: {self.type}: {self.message}")


class TaskCancelled(RunqError):
    """The task ended ``cancelled`` (by a user, or because a workflow step before it failed)."""

    def __init__(self, task_id: str, reason: str | None = None) -> None:
        self.task_id = task_id
        self.reason = reason
        super().__init__(f"task {task_id} was cancelled" + (f": {reason}" if reason else ""))


class Retry(RunqError):
    """Raise inside a task to run it again after ``delay`` seconds (default: the back-off).

    The retry counts as an attempt; once ``retries`` are used up the task fails.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        if delay is not None and delay < 0:
            raise ValueError(f"Retry delay must be >= 0, got {delay!r}")
        self.delay = delay
        self.reason = reason
        super().__init__(reason or (f"retry in {delay}s" if delay is not None else "retry"))


class SoftTimeout(Exception):
    """Raised inside a running task when it reaches its ``soft_timeout``: caught, the task may
    clean up and return before its hard ``timeout``; uncaught, the attempt fails (and is
    retried like any other failure).

    Not a :class:`RunqError`, so a task's ``except runq.RunqError`` around its own broker calls
    does not swallow it.
    """

    def __init__(self, message: str = "the task reached its soft_timeout") -> None:
        super().__init__(message)


def error_type(exc: BaseException) -> str:
    """The name an error is recorded under: builtins bare, others with their module."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, which a task's own exception class may break: never raises, and always
    valid UTF-8 (a broker must be able to store it)."""
    try:
        return printable(str(exc))
    except BaseException as inner:  # a broken __str__ is the task's bug, not ours
        return f"<{type(exc).__name__}: str() raised {type(inner).__name__}>"


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate becomes its backslash escape."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def retries_on(retry_for: tuple[type[BaseException], ...], error_class: type[BaseException]) -> bool:
    """Whether a task with this ``retry_for`` retries this error: every error when it names none."""
    return not retry_for or issubclass(error_class, retry_for)
