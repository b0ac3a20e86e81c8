"""``runq.Middleware``: the one seam through which anything watches tasks (SPEC §10).

Users' hooks and runq's own tracing, per-task metrics and task log lines all go through
it, so they see the same events in the same order and cost nothing when absent: a
method a middleware does not override is never called.

Where each hook runs:

==============  ===================================================  ==============================
hook            when                                                 where
==============  ===================================================  ==============================
on_enqueue      a message is built, before the broker call           the producer
on_start        just before the task's body                          where the task runs: its thread,
on_end          just after the task's body, with what it raised      coroutine or process-pool child
on_finish       once the attempt's outcome is settled                the worker (its settler thread)
==============  ===================================================  ==============================

``on_finish`` runs in the worker for every pool: what happened in a process-pool child
crosses the pipe as the attempt's end, never as shared memory. What a run-side hook must
hand on to ``on_finish`` (a trace id, say) it writes into ``task.notes``. A hook that
raises is logged and changes nothing: not the task's outcome, not the other hooks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from runq.context import TaskContext
from runq.models import Message

log = logging.getLogger("runq.middleware")

FinishStatus = Literal["succeeded", "retrying", "failed", "cancelled"]


@dataclass(frozen=True)
class TaskOutcome:
    """How one attempt ended, as settled: what :meth:`Middleware.on_finish` is told."""

    status: FinishStatus
    result_json: str | None = None  # the task's return value as JSON text, when it succeeded
    error: Mapping[str, Any] | None = None  # {"type", "message", "traceback"} when it did not
    duration: float | None = None  # seconds the task ran, when it ran
    wait: float | None = None  # seconds from due to start, for a first attempt of a plain task
    retry_in: float | None = None  # seconds until the next attempt, when retrying

    @property
    def result(self) -> Any:
        """The task's return value (decoded only when asked: most observers never look)."""
        return None if self.result_json is None else json.loads(self.result_json)


class Middleware:
    """Subclass and override the hooks you need; each default does nothing."""

    def on_enqueue(self, message: Message) -> Message | None:
        """A message is about to be sent; return a replacement (e.g. with trace context) or None."""
        return None

    def on_start(self, task: TaskContext) -> None:
        """The task's body is about to run, in the context it runs in (``runq.current()`` works)."""

    def on_end(self, task: TaskContext, error: BaseException | None) -> None:
        """The task's body returned (``error`` None) or raised ``error``, where it ran."""

    def on_finish(self, task: TaskContext, outcome: TaskOutcome) -> None:
        """The attempt's outcome is settled (in the worker)."""


def _overrides(middleware: Middleware, hook: str) -> bool:
    return getattr(type(middleware), hook) is not getattr(Middleware, hook)


class Observers:
    """A list of middleware, fanned out per hook; only the hooks someone overrides are called,
    so with none registered each event costs one empty-list check."""

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        found = list(middleware)
        self.middleware = tuple(found)
        self._enqueue = [m for m in found if _overrides(m, "on_enqueue")]
        self._start = [m for m in found if _overrides(m, "on_start")]
        self._end = [m for m in found if _overrides(m, "on_end")]
        self._finish = [m for m in found if _overrides(m, "on_finish")]
        self.runs = bool(self._start or self._end)  # whether anyone watches runs (on_start / on_end)
        self.finishes = bool(self._finish)

    def enqueue(self, message: Message) -> Message:
        for middleware in self._enqueue:
            try:
                message = middleware.on_enqueue(message) or message
            except Exception:
                log.exception("middleware %r failed in on_enqueue; the message is sent unchanged", middleware)
        return message

    def start(self, task: TaskContext) -> None:
        for middleware in self._start:
            try:
                middleware.on_start(task)
            except Exception:
                log.exception("middleware %r failed in on_start of %s", middleware, task.id)

    def end(self, task: TaskContext, error: BaseException | None) -> None:
        for middleware in reversed(self._end):  # unwound in the reverse order of on_start
            try:
                middleware.on_end(task, error)
            except Exception:
                log.exception("middleware %r failed in on_end of %s", middleware, task.id)

    def finish(self, task: TaskContext, outcome: TaskOutcome) -> None:
        for middleware in self._finish:
            try:
                middleware.on_finish(task, outcome)
            except Exception:
                log.exception("middleware %r failed in on_finish of %s", middleware, task.id)
