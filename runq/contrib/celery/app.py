"""``Celery(...)`` on runq: a :class:`runq.App` that speaks Celery's API, so ``runq worker
proj.celery:app`` runs a Celery project's tasks.

Settings are read where they map (``broker_url``, ``CELERY_BROKER_URL``, ``task_routes``...);
the ones with nothing to do on runq are accepted as documented no-ops; every other one raises
``NotImplementedError`` naming the runq way, so nothing is silently dropped.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import os
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, ClassVar

import runq
from runq.app import App, default_task_name
from runq.contrib.celery.result import AsyncResult
from runq.contrib.celery.task import Task, call_options, parse_task_options, runner
from runq.models import check_queue_name
from runq.settings import Settings

__all__ = ["Celery", "Config", "conf_of", "current_app", "shared_task"]

SEND_NO_OPS = {
    "retry": "a producer raises runq.BrokerUnavailable after connect_timeout instead",
    "retry_policy": "see retry",
    "ignore_result": "runq keeps every result for result_ttl",
    "serializer": "JSON only",
    "compression": "runq stores JSON text",
    "add_to_parent": "runq keeps no parent/child trail",
}
SEND_REFUSED = {
    "expires": "runq has no expiry yet (the coming task option is `expires`); revoke() a task that must not run",
    "soft_time_limit": "runq has no soft time limit yet (the coming option is `soft_timeout`); use time_limit",
    "link": "chain the tasks with runq.chain(a.s(...), b.s()), or @app.task(on_success=...)",
    "link_error": "use @app.task(on_failure=...) on a runq task",
    "task_id": "runq makes a task's id (it carries the queue)",
    "routing_key": "runq routes by queue= only",
    "exchange": "runq routes by queue= only",
    "headers": "a runq message carries arguments and options only",
    "shadow": "runq names a task by its registered name",
}
# Settings with nothing to do on runq (the README lists each with its reason).
CONF_NO_OPS = frozenset(
    {
        "result_backend",  # runq keeps results in its broker
        "task_acks_late",
        "task_reject_on_worker_lost",
        "worker_prefetch_multiplier",
        "task_track_started",
        "task_ignore_result",
        "result_extended",
        "broker_connection_retry",
        "broker_connection_retry_on_startup",
        "broker_transport_options",
        "result_backend_transport_options",
        "worker_hijack_root_logger",
        "worker_send_task_events",
        "task_send_sent_event",
        "timezone",  # Celery beat's; runq: @app.periodic(cron=..., tz=...)
    }
)
CONF_REFUSED = {
    "task_soft_time_limit": "runq has no soft time limit yet (the coming option is `soft_timeout`)",
    "beat_schedule": "give the task @app.periodic(cron=... or every=...) and run `runq beat APP`",
    "task_always_eager": "test with runq.App('memory://') and app.drain(), or call the task function",
    "task_queues": "runq makes a queue on first use; list the worker's with `runq worker --queues`",
    "task_annotations": "give the options on the task (@app.task(rate_limit=...))",
}
NOT_A_RUNQ_BROKER = ("amqp", "amqps", "pyamqp", "librabbitmq", "sqs", "kafka", "filesystem", "mongodb", "sentinel")


class Config:
    """``app.conf``: Celery's settings that map onto runq, applied as they are set."""

    _app: App | None
    routes: list[tuple[str, str]]  # (task name or glob, queue), first match wins
    default_queue: str | None
    default_priority: int | None
    time_limit: float | None
    imports: list[str]  # modules a worker imports (include=, imports, autodiscover_tasks)

    def __init__(self, app: App | None = None) -> None:
        fresh: dict[str, Any] = {
            "_app": app,
            "routes": [],
            "default_queue": None,
            "default_priority": None,
            "time_limit": None,
        }
        for name, value in {**fresh, "imports": []}.items():
            object.__setattr__(self, name, value)

    def update(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        for key, value in {**(values or {}), **more}.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        key = key.lower()
        if key in CONF_NO_OPS:
            return
        if key in CONF_REFUSED:
            raise NotImplementedError(f"Celery setting {key}: {CONF_REFUSED[key]}")
        handler = _HANDLERS.get(key)
        if handler is None:
            raise NotImplementedError(
                f"Celery setting {key} has no runq equivalent here; the ones read: {', '.join(sorted(_HANDLERS))}"
            )
        handler(self, value)

    def __setattr__(self, key: str, value: Any) -> None:
        """``app.conf.task_routes = {...}`` is a setting; the attributes above are this object's."""
        if key in self.__dict__:
            object.__setattr__(self, key, value)
        else:
            self[key] = value

    def route(self, name: str) -> str | None:
        return next((queue for pattern, queue in self.routes if fnmatch.fnmatchcase(name, pattern)), None)

    def _change(self, **settings: Any) -> None:
        if self._app is None:
            raise RuntimeError("this configuration has no app")
        self._app.configure(self._app.settings.with_(**settings))


def _set_url(conf: Config, url: str) -> None:
    conf._change(url=runq_url(url))


def _set_routes(conf: Config, routes: Any) -> None:
    items = routes if isinstance(routes, (list, tuple)) else [routes]
    found: list[tuple[str, str]] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise NotImplementedError("task_routes: runq reads {name or glob: {'queue': q}} maps only, not routers")
        for pattern, route in item.items():
            queue = route.get("queue") if isinstance(route, Mapping) else route
            if not isinstance(queue, str) or (isinstance(route, Mapping) and set(route) - {"queue"}):
                raise NotImplementedError(f"task_routes[{pattern!r}]: runq routes by queue only ({{'queue': 'name'}})")
            found.append((pattern, check_queue_name(queue)))
    conf.routes = found


def _set_serializer(conf: Config, value: Any) -> None:
    values = [value] if isinstance(value, str) else list(value)
    if not set(values) <= {"json", "application/json"}:
        raise NotImplementedError(f"serializer/content {value!r}: runq is JSON only (no pickle)")


def _set_enable_utc(conf: Config, value: Any) -> None:
    if not value:
        raise NotImplementedError("enable_utc=False: runq reads a naive eta as UTC; pass aware datetimes")


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


_HANDLERS: dict[str, Callable[[Config, Any], None]] = {
    "broker_url": _set_url,
    "broker_read_url": _set_url,
    "broker_write_url": _set_url,
    "result_expires": lambda conf, v: conf._change(result_ttl=_seconds(v)),
    "worker_concurrency": lambda conf, v: conf._change(concurrency=int(v)),
    "task_default_queue": lambda conf, v: setattr(conf, "default_queue", check_queue_name(v)),
    "task_default_priority": lambda conf, v: setattr(conf, "default_priority", v),
    "task_time_limit": lambda conf, v: setattr(conf, "time_limit", v),
    "task_routes": _set_routes,
    "task_serializer": _set_serializer,
    "result_serializer": _set_serializer,
    "accept_content": _set_serializer,
    "result_accept_content": _set_serializer,
    "enable_utc": _set_enable_utc,
    "imports": lambda conf, v: conf.imports.extend([v] if isinstance(v, str) else v),
    "include": lambda conf, v: conf.imports.extend([v] if isinstance(v, str) else v),
}


def runq_url(url: str) -> str:
    """A Celery broker URL as runq's: Redis and SQLAlchemy-style SQLite/PostgreSQL URLs map."""
    scheme = url.partition("://")[0].lower()
    if scheme.startswith("sqla+"):
        return url[len("sqla+") :]
    if scheme in NOT_A_RUNQ_BROKER:
        raise NotImplementedError(
            f"broker {scheme}://: runq's brokers are redis:// (rediss://, redis+cluster://, "
            "redis+sentinel://), postgresql:// and sqlite:///"
        )
    return url


class Celery(App):
    """``Celery("proj", broker=...)``: the runq App of a Celery project."""

    _shared: ClassVar[list[Task]] = []  # @shared_task tasks: registered on every app
    _apps: ClassVar[weakref.WeakSet[Celery]] = weakref.WeakSet()
    _current: ClassVar[Celery | None] = None

    def __init__(
        self,
        main: str | None = None,
        *,
        broker: str | None = None,
        backend: str | None = None,  # runq keeps results in its broker
        include: Iterable[str] = (),
        config_source: Any = None,
        set_as_current: bool = True,
        **unsupported: Any,
    ) -> None:
        if unsupported:
            raise NotImplementedError(f"Celery({', '.join(sorted(unsupported))}=...) has no runq equivalent")
        url = broker or os.environ.get("CELERY_BROKER_URL") or None
        super().__init__(settings=Settings.from_env(url=runq_url(url) if url else None))
        self.main = main
        self.conf = Config(self)
        self.conf.imports.extend(include)
        self.control = Control(self)
        self._celery_tasks: dict[str, Task] = {}
        self._discover: list[tuple[Any, str]] = []
        if config_source is not None:
            self.config_from_object(config_source)
        Celery._apps.add(self)
        if set_as_current:
            Celery._current = self
        for task in Celery._shared:
            self._register(task)

    def task(self, *args: Any, **options: Any) -> Any:  # Celery's signature, not runq's
        """``@app.task`` or ``@app.task(bind=True, max_retries=5, ...)``."""

        def create(fn: Callable[..., Any]) -> Task:
            task = make_task(fn, options, self)
            self._register(task)
            return task

        return _decorate(args, options, create)

    def _register(self, task: Task) -> None:
        known = self._celery_tasks.get(task.name)
        if known is task:
            return
        if known is not None or task.name in self.tasks:
            raise ValueError(f"a different task is already registered as {task.name!r}")
        config = task.config
        defaults = {"timeout": config.time_limit, "rate_limit": config.rate_limit, "retries": config.retries_cap}
        options: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        App.task(self, name=task.name, retry_for=(runq.Retry,), **options)(runner(task))
        self._celery_tasks[task.name] = task

    def send_task(
        self, name: str, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Send a task by name, as Celery's ``send_task`` (the task need not be importable here)."""
        known = self._celery_tasks.get(name)
        opts = call_options(self, name, options, known.config if known else None)
        return AsyncResult(self.send(name, list(args or ()), dict(kwargs or {}), opts).id, self)

    def AsyncResult(self, id: str) -> AsyncResult:  # Celery's name
        return AsyncResult(id, self)

    def config_from_object(self, obj: Any, namespace: str | None = None, silent: bool = False) -> None:
        """Read settings from an object, a module, or ``"module:attribute"`` (``"django.conf:settings"``)."""
        if isinstance(obj, str):
            module, _, attribute = obj.partition(":")
            try:
                obj = importlib.import_module(module)
            except ImportError:
                if silent:
                    return
                raise
            obj = getattr(obj, attribute) if attribute else obj
        prefix = f"{namespace}_" if namespace else ""
        for name in dir(obj):
            if name.startswith("_") or not name.startswith(prefix):
                continue
            key = name[len(prefix) :]
            if not namespace and not key.islower():
                continue
            value = getattr(obj, name)
            if not isinstance(value, (types.ModuleType, types.FunctionType, type)):
                self.conf[key] = value

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` of each package when a worker loads this app (``force``: now).
        Without packages: a Django project's installed apps (Django is set up first)."""
        self._discover.append((packages, related_name))
        if force:
            self._import_tasks()

    def configure(self, settings: Settings) -> None:
        """A worker (and each process-pool child) adopts its settings, then imports the task
        modules ``include``/``imports``/``autodiscover_tasks`` name, as Celery's worker does."""
        super().configure(settings)
        self._import_tasks()

    def _import_tasks(self) -> None:
        for module in self.conf.imports:
            importlib.import_module(module)
        for packages, related_name in self._discover:
            for package in _packages(packages):
                name = f"{package}.{related_name}"
                if importlib.util.find_spec(package) is not None and importlib.util.find_spec(name) is not None:
                    importlib.import_module(name)

    def start(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("run a worker with `runq worker module:app` (queues: --queues a,b)")

    worker_main = start


def _packages(packages: Iterable[str] | Callable[[], Iterable[str]] | None) -> list[str]:
    if callable(packages):
        return list(packages())
    if packages is not None:
        return list(packages)
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    return [config.name for config in apps.get_app_configs()]


class Control:
    """``app.control``: revoke only; inspect workers with ``runq workers`` / ``app.workers()``."""

    def __init__(self, app: App) -> None:
        self._app = app

    def revoke(self, task_id: str | list[str], terminate: bool = False, signal: Any = None) -> None:
        for one in [task_id] if isinstance(task_id, str) else task_id:
            self._app.cancel(one)

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(f"app.control.{name}: see `runq workers`, `runq status` and app.workers()")


def make_task(fn: Callable[..., Any], options: Mapping[str, Any], app: App | None) -> Task:
    import inspect

    if inspect.iscoroutinefunction(fn):
        raise NotImplementedError("Celery tasks are synchronous; give an async def to runq's own @app.task")
    values = dict(options)
    values.pop("shared", None)
    name = values.pop("name", None) or default_task_name(fn)
    return Task(fn, parse_task_options(name, values), app)


def _decorate(args: tuple[Any, ...], options: Mapping[str, Any], create: Callable[[Callable[..., Any]], Task]) -> Any:
    if len(args) == 1 and callable(args[0]) and not options:
        return create(args[0])
    if args:
        raise TypeError("use @task or @task(option=...), with keyword options only")
    return create


def shared_task(*args: Any, **options: Any) -> Any:
    """``@shared_task``: a task of every app (the current one sends it), as in Celery."""

    def create(fn: Callable[..., Any]) -> Task:
        task = make_task(fn, options, None)
        Celery._shared.append(task)
        for app in list(Celery._apps):
            app._register(task)
        return task

    return _decorate(args, options, create)


def conf_of(app: App) -> Config:
    """The Celery settings of ``app``: its own, or none for a plain runq App."""
    conf = getattr(app, "conf", None)
    return conf if isinstance(conf, Config) else Config()


class _CurrentApp:
    """``current_app``: the last Celery app made (one is made from the environment if none is)."""

    def _get_current_object(self) -> Celery:
        return Celery._current if Celery._current is not None else Celery()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_current_object(), name)

    def __repr__(self) -> str:
        return f"<current_app: {Celery._current!r}>"


current_app = _CurrentApp()
