"""``Celery(...)`` on runq: a :class:`runq.App` that speaks Celery's API, so ``runq worker
proj.celery:app`` runs a Celery project's tasks.

Settings are read where they map (``broker_url``, ``CELERY_BROKER_URL``, ``task_routes``...);
the ones with nothing to do on runq are accepted as documented no-ops; every other one raises
``NotImplementedError`` naming the runq way, so nothing is silently dropped.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import runq
from runq.app import App, default_task_name
from runq.contrib.celery.config import Config, Current, conf_of, runq_url
from runq.contrib.celery.result import AsyncResult
from runq.contrib.celery.task import Task, call_options, parse_task_options, runner
from runq.settings import Settings

__all__ = ["Celery", "Config", "conf_of", "current_app", "shared_task"]


class Celery(App):
    """``Celery("proj", broker=...)``: the runq App of a Celery project."""

    _shared: ClassVar[list[Task]] = []  # @shared_task tasks: registered on every app
    _apps: ClassVar[weakref.WeakSet[Celery]] = weakref.WeakSet()

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
        self._by_name: App | None = None  # builds messages of tasks this app lacks (send_task)
        if config_source is not None:
            self.config_from_object(config_source)
        Celery._apps.add(self)
        if set_as_current:
            Current.app = self
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
        defaults = {
            "timeout": config.time_limit,
            "soft_timeout": config.soft_time_limit,
            "rate_limit": config.rate_limit,
            "retries": config.retries_cap,
        }
        options: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        App.task(self, name=task.name, retry_for=(runq.Retry,), **options)(runner(task))
        self._celery_tasks[task.name] = task

    def send_task(
        self, name: str, args: Iterable[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Send a task by name, as Celery's ``send_task`` (the task need not be importable here).

        An App with tasks registered refuses names it does not know (runq/options.py), so a name
        this app lacks is built by a bare App of the same settings, which only builds messages."""
        known = self._celery_tasks.get(name)
        opts = call_options(self, name, options, known.config if known else None)
        if name in self.tasks:
            return AsyncResult(self.send(name, list(args or ()), dict(kwargs or {}), opts).id, self)
        if self._by_name is None:
            self._by_name = App(settings=self.settings)
        message = self._by_name.message(name, list(args or ()), dict(kwargs or {}), opts)
        task_id = self.broker.enqueue([message], self.settings.key_ttl)[0]
        return AsyncResult(task_id, self)

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


class _CurrentApp:
    """``current_app``: the last Celery app made (one is made from the environment if none is)."""

    def _get_current_object(self) -> App:
        return Current.get()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get_current_object(), name)

    def __repr__(self) -> str:
        return f"<current_app: {Current.app!r}>"


Current.make = Celery
current_app = _CurrentApp()
