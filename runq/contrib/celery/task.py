"""Celery's ``Task`` on runq: what ``@app.task`` and ``@shared_task`` return.

Each one is registered as a runq task whose function sets ``self.request`` and runs Celery's
retry rules in Python, so a worker applies them exactly: only ``self.retry()`` and
``autoretry_for`` retry (runq's ``retry_for`` is :class:`runq.Retry` alone, so any other
exception fails the task at once, as in Celery); ``max_retries``, ``default_retry_delay`` and
``retry_backoff`` give the delay each retry asks for.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NoReturn

from runq.context import current
from runq.contrib.celery.config import SEND_NO_OPS, SEND_REFUSED, Current, conf_of
from runq.contrib.celery.exceptions import MaxRetriesExceededError, Retry
from runq.contrib.celery.result import AsyncResult
from runq.options import MAX_RETRIES
from runq.tasks import Options, Signature

if TYPE_CHECKING:
    from runq.app import App

__all__ = ["Request", "Task", "TaskConfig", "call_options", "parse_task_options"]

# Accepted and ignored, with the reason the README's table gives.
NO_OP_OPTIONS = {
    "acks_late": "runq always acknowledges after the run (a lease): at-least-once, as acks_late=True",
    "reject_on_worker_lost": "a task whose worker dies runs again once its lease expires",
    "ignore_result": "runq keeps every result for result_ttl",
    "store_errors_even_if_ignored": "runq keeps every error",
    "track_started": "runq always records the start (STARTED)",
    "typing": "runq checks the arguments against the function's signature at enqueue",
    "throws": "only changes Celery's logging",
    "trail": "runq keeps no child-task trail",
}
REFUSED_OPTIONS = {
    "base": "runq has no Task subclasses: watch tasks with runq.Middleware",
}
RETRIES_FOREVER = MAX_RETRIES  # max_retries=None: runq's retries are a number, at most this


@dataclass(frozen=True)
class TaskConfig:
    """A task's Celery options, checked at decoration."""

    name: str
    bind: bool = False
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: Mapping[str, Any] = field(default_factory=dict)
    retry_backoff: float = 0.0  # 0: off; True is 1
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None  # runq's soft_timeout: SoftTimeLimitExceeded is runq.SoftTimeout
    expires: float | timedelta | datetime | None = None  # from the call, as apply_async(expires=...)
    rate_limit: str | None = None
    queue: str | None = None
    priority: int | None = None

    @property
    def retries_cap(self) -> int:
        """runq's own limit of attempts for this task: the largest max_retries it may ask for."""
        limits = [self.max_retries, self.retry_kwargs.get("max_retries", self.max_retries)]
        return RETRIES_FOREVER if None in limits else max(int(n) for n in limits if n is not None)


def parse_task_options(name: str, options: Mapping[str, Any]) -> TaskConfig:
    """``@app.task(...)``'s keywords → TaskConfig; NotImplementedError names the runq way for the rest."""
    values = dict(options)
    for key in [k for k in values if k in NO_OP_OPTIONS]:
        del values[key]
    if values.get("serializer", "json") != "json":
        raise NotImplementedError(f"serializer={values['serializer']!r}: runq is JSON only (no pickle)")
    values.pop("serializer", None)
    if values.get("base") in (None, Task):
        values.pop("base", None)
    for key, why in REFUSED_OPTIONS.items():
        if key in values:
            raise NotImplementedError(f"@task({key}=...): {why}")
    known = {spec for spec in TaskConfig.__dataclass_fields__ if spec != "name"}
    unknown = sorted(set(values) - known)
    if unknown:
        supported = ", ".join(sorted(known | set(NO_OP_OPTIONS) | {"serializer"}))
        raise NotImplementedError(
            f"Celery task option(s) {', '.join(unknown)} have no runq equivalent; supported: {supported}"
        )
    if values.get("retry_backoff") is True:
        values["retry_backoff"] = 1.0
    values["retry_backoff"] = float(values.get("retry_backoff") or 0.0)
    if isinstance(values.get("rate_limit"), (int, float)):
        values["rate_limit"] = f"{values['rate_limit']}/s"  # Celery: a bare number is tasks per second
    values["autoretry_for"] = tuple(values.get("autoretry_for", ()))
    retry_kwargs = dict(values.get("retry_kwargs", {}))
    if set(retry_kwargs) - {"max_retries", "countdown"}:
        raise NotImplementedError("retry_kwargs may hold max_retries and countdown only")
    return TaskConfig(name=name, **values)


@dataclass(frozen=True)
class Request:
    """``self.request`` of a bound task: this attempt, as Celery describes it."""

    id: str | None = None
    task: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    called_directly: bool = True
    delivery_info: Mapping[str, Any] = field(default_factory=dict)
    is_eager: bool = False


_request: ContextVar[Request | None] = ContextVar("runq_celery_request", default=None)


class Task:
    """A Celery-style task. ``task(*args)`` runs it here; ``delay`` / ``apply_async`` queue it."""

    def __init__(self, fn: Callable[..., Any], config: TaskConfig, app: App | None) -> None:
        self.run = fn
        self.config = config
        self._app = app  # None: a shared task, sent through the current app
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def max_retries(self) -> int | None:
        return self.config.max_retries

    @property
    def default_retry_delay(self) -> float:
        return self.config.default_retry_delay

    @property
    def app(self) -> App:
        return self._app if self._app is not None else Current.get()

    @property
    def request(self) -> Request:
        return _request.get() or Request()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.run(self, *args, **kwargs) if self.config.bind else self.run(*args, **kwargs)

    # -- sending ------------------------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        app = self.app
        opts = call_options(app, self.name, options, self.config)
        return AsyncResult(app.send(self.name, list(args or ()), dict(kwargs or {}), opts).id, app)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A runq signature, for runq.chain / group / chord (see the README's mapping)."""
        app = self.app
        return Signature(self.name, args, kwargs, call_options(app, self.name, {}, self.config), app)

    def si(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("runq.chain passes each result on: give a task .s() and let it ignore the value")

    def map(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("use runq.group(task.s(x) for x in items)")

    starmap = chunks = map

    def apply(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("call the task to run it here: task(*args); or test with runq.App('memory://')")

    def update_state(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("runq has no custom task states; the record shows pending/running/succeeded/failed")

    # -- inside the worker ----------------------------------------------------------------

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> NoReturn:
        """Run this task again later (``raise self.retry(exc=exc, countdown=60)``); past
        ``max_retries`` re-raise ``exc`` (or MaxRetriesExceededError), as Celery does."""
        request = self.request
        if request.called_directly:
            raise exc if exc is not None else Retry("Task can be retried", None)
        self._check_retry(request, args, kwargs, throw, max_retries, options)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}"
            )
        if countdown is None and eta is not None:
            countdown = (_aware(eta) - datetime.now(timezone.utc)).total_seconds()
        raise Retry(exc=exc, when=max(0.0, self.default_retry_delay if countdown is None else float(countdown)))

    def _check_retry(
        self,
        request: Request,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        throw: bool,
        max_retries: int | None,
        options: Mapping[str, Any],
    ) -> None:
        if options:
            raise NotImplementedError(f"retry({', '.join(sorted(options))}=...): runq retries a task on its own queue")
        if not throw:
            raise NotImplementedError("retry(throw=False): a runq task retries by raising; raise self.retry(...)")
        if (args is not None and list(args) != list(request.args)) or (
            kwargs is not None and dict(kwargs) != dict(request.kwargs)
        ):
            raise NotImplementedError("runq retries a task with its own arguments: enqueue a new task for new ones")
        if max_retries is not None and max_retries > self.config.retries_cap:
            raise NotImplementedError(
                f"retry(max_retries={max_retries}) is above what {self.name} declares ({self.config.retries_cap}), "
                "which runq enforces on every attempt: declare it on the task (max_retries or retry_kwargs)"
            )

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One attempt in the worker: ``self.request`` set, autoretry_for applied."""
        here = current()
        request = Request(here.id, here.name, args, kwargs, here.attempt - 1, False, {"routing_key": here.queue})
        token = _request.set(request)
        try:
            return self(*args, **kwargs)
        except Retry:
            raise
        except self.config.autoretry_for as exc:  # an empty tuple catches nothing
            self.retry(exc=exc, **self._autoretry_kwargs(request))
        finally:
            _request.reset(token)

    def _autoretry_kwargs(self, request: Request) -> dict[str, Any]:
        """Celery's autoretry: retry_kwargs, with an exponential countdown when retry_backoff is on
        (factor * 2**retries, at most retry_backoff_max; full jitter draws from 0 to that)."""
        given = dict(self.config.retry_kwargs)
        if self.config.retry_backoff:
            countdown = min(self.config.retry_backoff_max, self.config.retry_backoff * 2**request.retries)
            given["countdown"] = random.uniform(0, countdown) if self.config.retry_jitter else countdown
        return given


def runner(task: Task) -> Callable[..., Any]:
    """The function runq registers for ``task``; it binds arguments as the task's function does."""

    def run(*args: Any, **kwargs: Any) -> Any:
        return task._run(args, kwargs)

    signature = inspect.signature(task.run)
    if task.config.bind:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    run.__signature__ = signature  # type: ignore[attr-defined]
    run.__doc__ = task.run.__doc__
    return run


def call_options(app: App, name: str, options: Mapping[str, Any], config: TaskConfig | None) -> Options:
    """``apply_async``'s options (and the app's routes and defaults) → runq options for one call."""
    values = dict(options)
    for key in [k for k in values if k in SEND_NO_OPS]:
        if key == "serializer" and values[key] != "json":
            raise NotImplementedError(f"serializer={values[key]!r}: runq is JSON only (no pickle)")
        del values[key]
    for key, why in SEND_REFUSED.items():
        if values.get(key) is not None:
            raise NotImplementedError(f"apply_async({key}=...): {why}")
        values.pop(key, None)
    mapped = {"countdown", "eta", "expires", "queue", "priority", "time_limit", "soft_time_limit"}
    unknown = sorted(set(values) - mapped)
    if unknown:
        names, supported = ", ".join(unknown), ", ".join(sorted(mapped))
        raise NotImplementedError(f"apply_async option(s) {names} have no runq equivalent; supported: {supported}")
    conf = conf_of(app)
    own = config or TaskConfig(name)  # a task this process does not know: its worker's options apply
    result: dict[str, Any] = {
        "queue": values.get("queue") or conf.route(name) or own.queue or conf.default_queue,
        "priority": values.get("priority", own.priority if own.priority is not None else conf.default_priority),
        "timeout": values.get("time_limit") or own.time_limit or conf.time_limit,
        "soft_timeout": values.get("soft_time_limit") or own.soft_time_limit or conf.soft_time_limit,
        "retries": config.retries_cap if config else None,
    }
    if values.get("countdown") is not None:
        result["delay"] = max(0.0, float(values["countdown"]))
    if values.get("eta") is not None:
        result["eta"] = _aware(values["eta"])
    expires = values.get("expires", own.expires)
    if expires is not None:  # seconds or a datetime from now: not started by then, it ends REVOKED
        result["expires"] = _aware(expires) if isinstance(expires, datetime) else expires
    return Options.build({k: v for k, v in result.items() if v is not None})


def _aware(when: datetime) -> datetime:
    """Celery reads a naive eta as UTC (enable_utc, its default)."""
    if isinstance(when, datetime) and when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when
