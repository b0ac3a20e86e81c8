"""The worker's task log lines (``succeeded``, ``retried``, ``failed``, ``cancelled``), on the
middleware seam: one line per settled attempt, with the fields runq/logs.py prints."""

from __future__ import annotations

import logging
from typing import Any

from runq.context import TaskContext
from runq.observe.middleware import Middleware, TaskOutcome
from runq.observe.tracing import log_ids

log = logging.getLogger("runq.worker")

MALFORMED = "(malformed)"  # the task name of a payload that is not a runq message
_EVENTS = {"succeeded": "succeeded", "retrying": "retried", "failed": "failed", "cancelled": "cancelled"}
_CANCELLED = "its claim is gone: cancelled, or taken over after a stall"


class TaskLog(Middleware):
    def __init__(self, worker: str) -> None:
        self.worker = worker

    def on_finish(self, task: TaskContext, outcome: TaskOutcome) -> None:
        level = logging.WARNING if outcome.status == "failed" else logging.INFO
        if not log.isEnabledFor(level):
            return
        fields: dict[str, Any] = {
            "task_id": task.id,
            "task": None if task.name == MALFORMED else task.name,
            "queue": task.queue,
            "attempt": task.attempt,
            "worker": self.worker,
        }
        if outcome.duration is not None:
            fields["duration"] = round(outcome.duration, 6)
        # The attempt's own span when it had one, else the producer's (no OpenTelemetry call).
        ids = (task.notes["trace_id"], task.notes["span_id"]) if "span_id" in task.notes else log_ids(task.trace)
        if ids:
            fields["trace_id"], fields["span_id"] = ids
        if outcome.error:
            fields["error"] = f"{outcome.error.get('type')}: {outcome.error.get('message')}"
        if outcome.retry_in is not None:
            fields["retry_in"] = round(outcome.retry_in, 3)
        if outcome.status == "cancelled":
            fields["reason"] = _CANCELLED
        log.log(level, _EVENTS[outcome.status], extra={"task": fields})
