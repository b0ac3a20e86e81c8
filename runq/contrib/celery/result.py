"""``AsyncResult``: Celery's view of one task, read from runq's record of it.

Celery calls an id it does not know PENDING (it cannot tell "not started" from "never sent"),
and so does this; ``get()`` re-raises the task's own exception when its class is a builtin or
already imported here (never importing a module named by the broker's data), else
:class:`runq.TaskFailed`.
"""

from __future__ import annotations

import builtins
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runq.context import current
from runq.contrib.celery import states
from runq.contrib.celery.config import Current
from runq.contrib.celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeoutError
from runq.errors import ErrorKind, TaskCancelled, TaskFailed
from runq.models import Status, TaskInfo, queue_of

if TYPE_CHECKING:
    from runq.app import App

__all__ = ["AsyncResult", "rebuild_exception"]


class AsyncResult:
    """``AsyncResult(task_id)`` (the current app) or ``app.AsyncResult(task_id)``."""

    def __init__(self, id: str, app: App | None = None) -> None:
        self.id = id
        self.app: App = app if app is not None else Current.get()

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _info(self) -> TaskInfo | None:
        try:
            queue_of(self.id)
        except ValueError:
            return None
        return self.app.info(self.id)

    @property
    def state(self) -> str:
        return state_of(self._info())

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> Any:
        """The return value once SUCCESS, the exception once FAILURE or REVOKED, else None."""
        info = self._info()
        if info is None or not info.status.final:
            return None
        if info.status is Status.SUCCEEDED:
            return info.result
        return _exception(info)

    info = result

    @property
    def traceback(self) -> str | None:
        info = self._info()
        return (info.error or {}).get("traceback") if info else None

    @property
    def date_done(self) -> datetime | None:
        info = self._info()
        return info.finished_at if info else None

    @property
    def name(self) -> str | None:
        info = self._info()
        return info.name if info else None

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        **unsupported: Any,
    ) -> Any:
        """Wait for the task (runq waits without polling on Redis, so ``interval`` is unused)."""
        if unsupported:
            raise NotImplementedError(f"AsyncResult.get({', '.join(sorted(unsupported))}=...) has no runq equivalent")
        if disable_sync_subtasks and _inside_a_task():
            raise RuntimeError("Never call result.get() within a task! (runq: chain the tasks with runq.chain)")
        try:
            return self.app.handle(self.id).result(timeout)
        except builtins.TimeoutError:
            raise TimeoutError("The operation timed out.") from None
        except (TaskFailed, TaskCancelled) as exc:
            info = self._info()
            error = _exception(info) if info is not None else exc
            if propagate:
                raise error from None
            return error

    wait = get

    def revoke(self, terminate: bool = False, signal: Any = None) -> None:
        """runq's cancel: a pending task never runs; a running one is stopped (SPEC §3), whatever
        ``terminate`` says."""
        self.app.cancel(self.id)

    def forget(self) -> None:
        raise NotImplementedError("runq keeps a result for result_ttl (result_expires); remove it with app.purge()")


def state_of(info: TaskInfo | None) -> str:
    if info is None:
        return states.PENDING
    if info.status is Status.SCHEDULED and info.attempts > 0:
        return states.RETRY
    return {
        Status.RUNNING: states.STARTED,
        Status.SUCCEEDED: states.SUCCESS,
        Status.FAILED: states.FAILURE,
        Status.CANCELLED: states.REVOKED,
    }.get(info.status, states.PENDING)


def _inside_a_task() -> bool:
    try:
        current()
    except RuntimeError:
        return False
    return True


def _exception(info: TaskInfo) -> BaseException:
    error = info.error or {}
    if info.status is Status.CANCELLED:
        return TaskRevokedError(error.get("message") or "revoked")
    if error.get("type") == ErrorKind.SOFT_TIMEOUT:  # recorded under runq's own name
        return SoftTimeLimitExceeded(str(error.get("message", "")))
    rebuilt = rebuild_exception(str(error.get("type", "")), str(error.get("message", "")))
    return rebuilt if rebuilt is not None else TaskFailed(info.id, error)


def rebuild_exception(kind: str, message: str) -> BaseException | None:
    """The task's exception, as Celery's ``get()`` re-raises it: a builtin, or a class from a
    module this process has imported already; None when it cannot be made faithfully."""
    module_name, _, qualname = kind.rpartition(".")
    owner: Any = sys.modules.get(module_name) if module_name else builtins
    for part in qualname.split(".") if owner is not None else ():
        owner = getattr(owner, part, None)
    if not (isinstance(owner, type) and issubclass(owner, Exception)):
        return None
    try:
        return owner(message)
    except Exception:  # a constructor that wants other arguments
        return None
