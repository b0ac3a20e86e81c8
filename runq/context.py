"""``runq.current()``: what a running task knows about itself.

A ContextVar (not a thread-local) so that it is right in threads, in child
processes and in concurrently running coroutines of the async pool alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field


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

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled: a thread-pool task should return soon."""
        return self._cancelled

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
