"""A task's own hooks (``@app.task(on_success=, on_failure=)``), on the middleware seam: called
in the worker once the task's outcome is final, never on a retry."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runq.context import TaskContext
from runq.observe.middleware import Middleware, TaskOutcome

if TYPE_CHECKING:
    from runq.tasks import Task

log = logging.getLogger("runq.worker")


class TaskHooks(Middleware):
    def __init__(self, tasks: Mapping[str, Task[Any, Any]]) -> None:
        self._tasks = tasks

    @staticmethod
    def wanted(tasks: Mapping[str, Task[Any, Any]]) -> bool:
        """Whether any task has a hook (else a worker leaves this middleware out)."""
        return any(task.hooks.on_success or task.hooks.on_failure for task in tasks.values())

    def on_finish(self, task: TaskContext, outcome: TaskOutcome) -> None:
        defined = self._tasks.get(task.name)
        if defined is None:
            return
        hook = {"succeeded": defined.hooks.on_success, "failed": defined.hooks.on_failure}.get(outcome.status)
        if hook is None:
            return
        try:
            hook(task, outcome)
        except Exception:
            log.exception("the %s hook of task %s raised; the task's outcome stands", outcome.status, task.name)
