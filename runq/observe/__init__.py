"""Watching tasks: the :class:`~runq.observe.middleware.Middleware` seam, and runq's own
observers built on it (OpenTelemetry spans, per-task metrics, task log lines)."""

from runq.observe.middleware import Middleware, Observers, TaskOutcome

__all__ = ["Middleware", "Observers", "TaskOutcome"]
