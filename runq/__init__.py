"""runq: a fast, reliable distributed task queue (SQLite, Redis or PostgreSQL; JSON only)."""

from runq.app import App
from runq.context import TaskContext, current
from runq.errors import (
    BrokerUnavailable,
    Retry,
    RunqError,
    SoftTimeout,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
)
from runq.handles import BatchHandle, GroupHandle, Handle
from runq.models import DrainResult, Event, Progress, Stats, Status, TaskInfo, WorkerInfo
from runq.observe import Middleware, TaskOutcome
from runq.options import Limit
from runq.settings import Settings
from runq.tasks import Signature, Task
from runq.workflow import batch, chain, chord, group

__all__ = [
    "App",
    "BatchHandle",
    "BrokerUnavailable",
    "DrainResult",
    "Event",
    "GroupHandle",
    "Handle",
    "Limit",
    "Middleware",
    "Progress",
    "Retry",
    "RunqError",
    "Settings",
    "Signature",
    "SoftTimeout",
    "Stats",
    "Status",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskInfo",
    "TaskNotFound",
    "TaskOutcome",
    "WorkerInfo",
    "batch",
    "chain",
    "chord",
    "current",
    "group",
]
