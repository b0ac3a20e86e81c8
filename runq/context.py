"""``runq.current()``: what a running task knows about itself.

A ContextVar (not a thread-local) so that it is right in threads, in child
processes and in concurrently running coroutines of the async pool alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from runq.options import check_progress

# Where a run's progress goes (runq/worker/progress.py): given the checked value and message.
ProgressSink = Callable[[float | None, str | None], None]


@dataclass
class TaskContext:
    """One attempt of a task: what ``runq.current()`` returns and what middleware is told."""

    id: str
    name: str
    queue: str
    attempt: int
    trace: Mapping[str, str] | None = field(default=None, repr=False)  # the message's trace context
    # What run-side middleware hands on to on_finish (e.g. trace ids); crosses the process pool's pipe.
    notes: dict[str, str] = field(default_factory=dict, repr=False)
    _cancelled: bool = field(default=False, repr=False)
    _progress: ProgressSink | None = field(default=None, repr=False)  # set by the runtime for a claimed run

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled: a thread-pool task should return soon."""
        return self._cancelled

    def progress(self, value: float | None = None, message: str | None = None) -> None:
        """Say how far this attempt is: ``value`` from 0.0 to 1.0 and/or a short ``message``.

        Call it as often as you like: it never blocks on the broker and never fails the task
        (an outage drops the update). The latest call wins, and at most a few per second reach
        the broker; the last one always does, before the attempt's outcome. ``h.info().progress``
        and ``h.events()`` show it.
        """
        value, message = check_progress(value, message)
        if self._progress is not None:
            self._progress(value, message)

    def cancel(self) -> None:
        """Set by the pool from another thread; a plain attribute is enough to be seen."""
        self._cancelled = True


_current: ContextVar[TaskContext | None] = ContextVar("runq_current", default=None)


def current() -> TaskContext:
    """The task running in this context; ``RuntimeError`` outside a task."""
    context = _current.get()
    if context is None:
        raise RuntimeError("runq.current() is only available inside a running task")
    return context
