"""runq: a fast, reliable distributed task queue (SQLite or Redis, JSON only)."""

from runq.app import App
from runq.context import TaskContext, current
from runq.errors import BrokerUnavailable, Retry, RunqError, TaskCancelled, TaskFailed, TaskNotFound
from runq.handles import Handle
from runq.models import Stats, Status, TaskInfo, WorkerInfo
from runq.settings import Settings
from runq.tasks import Signature, Task

__all__ = [
    "App",
    "BrokerUnavailable",
    "Handle",
    "Retry",
    "RunqError",
    "Settings",
    "Signature",
    "Stats",
    "Status",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskInfo",
    "TaskNotFound",
    "WorkerInfo",
    "current",
]
