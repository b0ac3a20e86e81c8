"""runq as a backend of Django's Tasks framework: ``django.tasks`` (Django >= 6.0), or the
``django-tasks`` backport that provides the same framework to Django 4.2-5.2.

    TASKS = {"default": {"BACKEND": "runq.contrib.django.RunqBackend", "OPTIONS": {"url": ...}}}

A framework task is a runq task named after its function's import path (``shop.tasks.send``):
it is registered on the project's App when the framework validates it, which is when its
module is imported, so a worker that imports every installed app's ``tasks.py`` (what
``manage.py runq_worker`` does) knows every task without a list of them. ``enqueue()`` sends
a runq message; ``get_result()`` reads runq's record of it, whose id is runq's task id.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, transaction
from django.utils.module_loading import import_string

from runq.context import current
from runq.models import Message, Status, TaskInfo, queue_of
from runq.options import check_queue
from runq.tasks import Options

if TYPE_CHECKING:
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued

    from runq.app import App
else:
    try:  # Django >= 6.0 ships the framework
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
        from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued
    except ImportError:  # the backport (pip install django-tasks)
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
        from django_tasks.exceptions import InvalidTaskError as InvalidTask
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued

__all__ = ["RunqBackend", "RunqTask", "to_result"]

# The framework runs a task once: a failure is FAILED, not retried, unless OPTIONS say otherwise.
DEFAULT_RETRIES = 0

# The framework has no "cancelled": a task that will never run is FAILED (its error says why).
_STATUS = {
    Status.PENDING: "READY",
    Status.SCHEDULED: "READY",  # due later, or waiting for a retry
    Status.WAITING: "READY",
    Status.RUNNING: "RUNNING",
    Status.SUCCEEDED: "SUCCESSFUL",
    Status.FAILED: "FAILED",
    Status.CANCELLED: "FAILED",
}

# runq name -> the framework task it runs, for results read back in this process.
_TASKS: dict[str, Task[Any, Any]] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunqTask(Task[Any, Any]):
    """The backend's task class: the framework's Task plus ``enqueue_on_commit``, the per-task
    override of the backend's ``ENQUEUE_ON_COMMIT`` (``@task(enqueue_on_commit=False)``)."""

    enqueue_on_commit: bool | None = None


class RunqBackend(BaseTaskBackend):
    """Every task of this backend runs on a runq worker (``manage.py runq_worker``)."""

    task_class = RunqTask
    supports_defer = True  # run_after: runq's eta
    supports_async_task = True  # async def tasks run as runq coroutine tasks
    supports_get_result = True  # from any process: runq's record in the broker
    supports_priority = True  # the framework's -100..100 is runq's range, higher first

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        from django.core.exceptions import ImproperlyConfigured

        from runq.contrib.django import get_app, split_options

        super().__init__(alias, params)
        try:
            _, task_options = split_options(self.options)
            self.defaults = Options.build({"retries": DEFAULT_RETRIES, **task_options})
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from None
        on_commit = params.get("ENQUEUE_ON_COMMIT", False)
        if not isinstance(on_commit, (bool, str)):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['ENQUEUE_ON_COMMIT'] must be a bool or a database alias")
        self.enqueue_on_commit: bool | str = on_commit
        self.app: App = get_app()  # built from RUNQ and these OPTIONS; a conflict between them fails here

    # -- validating (and so registering) ------------------------------------------------

    def validate_task(self, task: Task[Any, Any]) -> None:
        """The framework's checks, runq's queue-name rule, then the task is known to runq."""
        super().validate_task(task)
        try:
            check_queue(task.queue_name)
        except ValueError as exc:
            raise InvalidTask(str(exc)) from None
        self._register(task)

    def _register(self, task: Task[Any, Any]) -> None:
        name = task.module_path
        known = self.app.tasks.get(name)
        if known is not None:
            if getattr(known.fn, "django_task", None) is None:
                raise InvalidTask(f"{name} is already a runq task (@app.task); give one of them another name")
            return
        rate: dict[str, Any] = {"rate_limit": self.defaults.rate_limit} if self.defaults.rate_limit else {}
        self.app.task(name=name, **rate)(_runner(task))
        _TASKS[name] = task

    # -- enqueueing ---------------------------------------------------------------------

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        self.validate_task(task)
        message = self._message(task, args, kwargs)
        result = _ready(task, message, self.alias, enqueued=None)
        using = self._on_commit(task)
        if using is None:
            return self._send(message, result)
        transaction.on_commit(functools.partial(self._send, message, result), using=using)
        return result

    async def aenqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Sent without blocking the event loop; with on-commit, through the sync path
        (a transaction's hooks belong to its synchronous connection)."""
        if self._on_commit(task) is not None:
            return await super().aenqueue(task, args, kwargs)
        self.validate_task(task)
        message = self._message(task, args, kwargs)
        broker = await self.app.async_broker()
        await broker.enqueue_one(message, self.app.settings.key_ttl)
        return _sent(_ready(task, message, self.alias, enqueued=_now()), self)

    def _message(self, task: Task[Any, Any], args: Any, kwargs: Any) -> Message:
        eta = task.run_after
        if eta is not None and eta.tzinfo is None:  # USE_TZ = False: local time, as Django's
            eta = eta.astimezone()
        call = replace(self.defaults, queue=task.queue_name, priority=task.priority, eta=eta)
        return self.app.message(task.module_path, args, kwargs, replace(call, rate_limit=None))

    def _send(self, message: Message, result: TaskResult[Any]) -> TaskResult[Any]:
        self.app.broker.enqueue([message], self.app.settings.key_ttl)
        object.__setattr__(result, "enqueued_at", _now())
        return _sent(result, self)

    def _on_commit(self, task: Task[Any, Any]) -> str | None:
        """The database whose commit sends this task, or None to send it now."""
        wanted = getattr(task, "enqueue_on_commit", None)
        setting = self.enqueue_on_commit
        if wanted is None:
            wanted = bool(setting)
        if not wanted:
            return None
        return setting if isinstance(setting, str) else DEFAULT_DB_ALIAS

    # -- results ------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult[Any]:
        return self._result(result_id, self.app.info(result_id) if _is_runq_id(result_id) else None)

    async def aget_result(self, result_id: str) -> TaskResult[Any]:
        info = await self.app.ainfo(result_id) if _is_runq_id(result_id) else None
        return self._result(result_id, info)

    def _result(self, result_id: str, info: TaskInfo | None) -> TaskResult[Any]:
        if info is None:
            raise TaskResultDoesNotExist(result_id)
        task = _framework_task(info.name)
        if task is None:
            raise TaskResultDoesNotExist(f"{result_id} is runq task {info.name!r}, not a task of Django's framework")
        return to_result(task, info, self.alias)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        if "runq.contrib.django" in settings.INSTALLED_APPS:
            return []
        return [
            checks.Error(
                "RunqBackend needs 'runq.contrib.django' in INSTALLED_APPS",
                hint="It gives `manage.py runq_worker`, and imports every app's tasks.py so workers know the tasks.",
                id="runq.E001",
            )
        ]


def to_result(task: Task[Any, Any], info: TaskInfo, alias: str) -> TaskResult[Any]:
    """runq's record of a task as the framework's TaskResult."""
    if (info.priority, info.queue) != (task.priority, task.queue_name):
        with contextlib.suppress(InvalidTask):  # a queue another alias allows: keep the task's own
            task = replace(task, priority=info.priority, queue_name=info.queue)
    result: TaskResult[Any] = TaskResult(
        task=task,
        id=info.id,
        status=TaskResultStatus(_STATUS[info.status]),
        enqueued_at=info.enqueued_at,
        started_at=info.started_at,
        finished_at=info.finished_at,
        last_attempted_at=info.started_at,
        args=info.args or [],
        kwargs=info.kwargs or {},
        backend=alias,
        errors=_errors(info),
        # runq keeps the last worker only; one entry per attempt keeps `attempts` right.
        worker_ids=[info.worker or ""] * info.attempts,
    )
    if info.status is Status.SUCCEEDED:
        object.__setattr__(result, "_return_value", info.result)
    return result


def _errors(info: TaskInfo) -> list[TaskError]:
    """runq keeps the latest attempt's error: the list holds that one."""
    if info.status is Status.CANCELLED:
        reason = (info.error or {}).get("message") or "cancelled"
        return [TaskError(exception_class_path="runq.errors.TaskCancelled", traceback=str(reason))]
    if not info.error:
        return []
    kind = str(info.error.get("type") or "Error")
    text = info.error.get("traceback") or f"{kind}: {info.error.get('message', '')}"
    return [TaskError(exception_class_path=_exception_path(kind), traceback=str(text))]


def _exception_path(kind: str) -> str:
    """runq writes builtins bare (``ValueError``) and its own kinds (``WorkerLost``) as words;
    the framework wants an importable path."""
    if "." in kind:
        return kind
    import builtins

    if isinstance(getattr(builtins, kind, None), type):
        return f"builtins.{kind}"
    if kind == "Retry":
        return "runq.errors.Retry"
    return "runq.errors.RunqError"  # WorkerLost, WorkerCrashed, UnknownTask...: the traceback names it


def _ready(task: Task[Any, Any], message: Message, alias: str, enqueued: datetime | None) -> TaskResult[Any]:
    return TaskResult(
        task=task,
        id=message.id,
        status=TaskResultStatus("READY"),
        enqueued_at=enqueued,
        started_at=None,
        finished_at=None,
        last_attempted_at=None,
        args=message.args,
        kwargs=message.kwargs,
        backend=alias,
        errors=[],
        worker_ids=[],
    )


def _sent(result: TaskResult[Any], backend: RunqBackend) -> TaskResult[Any]:
    task_enqueued.send(type(backend), task_result=result)
    return result


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _is_runq_id(result_id: str) -> bool:
    try:
        queue_of(result_id)
    except (TypeError, ValueError):
        return False
    return True


def _framework_task(name: str) -> Task[Any, Any] | None:
    """The framework task behind runq name ``name``: registered here, or importable by it."""
    found = _TASKS.get(name)
    if found is not None:
        return found
    try:
        candidate = import_string(name)
    except ImportError:
        return None
    return candidate if isinstance(candidate, Task) else None


# -- in the worker ------------------------------------------------------------------------


def _runner(task: Task[Any, Any]) -> Callable[..., Any]:
    """The runq task function of a framework task: calls its function, with a TaskContext
    first when it ``takes_context``."""
    func, name = task.func, task.module_path

    if inspect.iscoroutinefunction(func):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            if task.takes_context:
                return await func(await _acontext(name), *args, **kwargs)
            return await func(*args, **kwargs)

        run: Callable[..., Any] = run_async
    else:

        def run_sync(*args: Any, **kwargs: Any) -> Any:
            if task.takes_context:
                return func(_context(name), *args, **kwargs)
            return func(*args, **kwargs)

        run = run_sync
    run.__doc__ = func.__doc__
    run.__signature__ = _callers_signature(func, task.takes_context)  # type: ignore[attr-defined]
    run.django_task = task  # type: ignore[attr-defined]
    return run


def _callers_signature(func: Callable[..., Any], takes_context: bool) -> inspect.Signature:
    """What ``enqueue()`` binds its arguments to: the function's, less ``context``."""
    signature = inspect.signature(func)
    if not takes_context:
        return signature
    return signature.replace(parameters=list(signature.parameters.values())[1:])


def _context(name: str) -> TaskContext:
    backend = _TASKS[name].get_backend()
    return TaskContext(task_result=backend.get_result(current().id))


async def _acontext(name: str) -> TaskContext:
    backend = _TASKS[name].get_backend()
    return TaskContext(task_result=await backend.aget_result(current().id))
