"""runq: a fast, reliable distributed task queue (SQLite, Redis or PostgreSQL; JSON only)."""

from runq.app import App
from runq.context import TaskContext, current
from runq.errors import BrokerUnavailable, Retry, RunqError, TaskCancelled, TaskFailed, TaskNotFound
from runq.handles import GroupHandle, Handle
from runq.models import DrainResult, Stats, Status, TaskInfo, WorkerInfo
from runq.observe import Middleware, TaskOutcome
from runq.options import Limit
from runq.settings import Settings
from runq.tasks import Signature, Task
from runq.workflow import chain, chord, group

__all__ = [
    "App",
    "BrokerUnavailable",
    "DrainResult",
    "GroupHandle",
    "Handle",
    "Limit",
    "Middleware",
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
    "TaskOutcome",
    "WorkerInfo",
    "chain",
    "chord",
    "current",
    "group",
]
