"""Celery's exceptions that task code raises or catches, as runq means them.

Retry                      raised by ``self.retry()``: a runq.Retry, so the worker retries the task
MaxRetriesExceededError    ``self.retry()`` past ``max_retries`` without an ``exc`` to re-raise
TimeoutError               ``AsyncResult.get(timeout=...)`` ran out (also a builtin TimeoutError)
TaskRevokedError           ``AsyncResult.get()`` of a task that was cancelled (revoked)
SoftTimeLimitExceeded      raised inside a task at its ``soft_time_limit``: it is runq.SoftTimeout itself
"""

from __future__ import annotations

import builtins

import runq

__all__ = ["MaxRetriesExceededError", "Retry", "SoftTimeLimitExceeded", "TaskRevokedError", "TimeoutError"]


class Retry(runq.Retry):
    """The task asked to run again ``when`` seconds from now (``raise self.retry(...)``)."""

    def __init__(self, message: str | None = None, exc: BaseException | None = None, when: float | None = None) -> None:
        self.exc = exc
        self.when = when
        reason = message or (f"Retry in {when}s: {exc!r}" if exc is not None else f"Retry in {when}s")
        super().__init__(delay=when, reason=reason)


class MaxRetriesExceededError(Exception):
    """``self.retry()`` was called once more than ``max_retries`` allows, without ``exc``."""


class TimeoutError(builtins.TimeoutError):  # Celery's name: `except TimeoutError` code keeps working
    """``AsyncResult.get(timeout=...)``: the task was not ready in time."""


class TaskRevokedError(Exception):
    """The task was revoked (runq: cancelled) before it finished."""


# runq raises its own SoftTimeout at a task's soft_timeout (what soft_time_limit maps to): the same
# class, so ``except SoftTimeLimitExceeded:`` in Celery code catches it, and get() raises it.
SoftTimeLimitExceeded = runq.SoftTimeout
