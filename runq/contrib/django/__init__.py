"""runq in a Django project: add ``"runq.contrib.django"`` to ``INSTALLED_APPS``.

* ``RUNQ = {"url": ..., ...}`` in settings.py holds :class:`runq.Settings` fields. They win
  over ``RUNQ_*`` variables (as ``App(url)`` does) and lose to the flags of ``manage.py
  runq_worker``, so a project reads its secrets from the environment in settings.py, as usual.
* :func:`get_app` (also importable as ``app``) is the project's one App. Tasks live in each
  installed app's ``tasks.py`` (``from runq.contrib.django import app``; ``@app.task``), which
  are imported when Django is ready, so a worker knows every task without a list of them.
* ``manage.py runq_worker`` / ``runq_beat`` are ``runq worker`` / ``runq beat`` on that App,
  with the same flags.
* :func:`delay_on_commit` (``delay_on_commit(send_receipt, order.pk)``) enqueues only once the
  surrounding ``transaction.atomic()`` commits, so a worker never looks for a row that is not
  committed yet, or never will be.
* ``RunqBackend`` (runq/contrib/django/backend.py) is a backend of Django's Tasks framework
  (``django.tasks``, or the ``django-tasks`` backport before Django 6.0): ``TASKS = {"default":
  {"BACKEND": "runq.contrib.django.RunqBackend", "OPTIONS": {...}}}``. Its OPTIONS may hold the
  Settings fields instead of ``RUNQ``; a project has one App, so the two must agree.

Only this package imports Django: core runq never does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from runq.settings import Settings
from runq.tasks import BoundTask, Signature, Task

if TYPE_CHECKING:
    from runq.app import App

__all__ = [
    "APP_PATH",
    "RunqBackend",
    "RunqTask",
    "autodiscover",
    "delay_on_commit",
    "get_app",
    "project_config",
    "release_connections",
    "runq_settings",
    "split_options",
]

# A RunqBackend's OPTIONS: runq Settings fields (the project's App), and task options for
# every task of that backend (queue, priority and run_after are the framework's own fields).
SETTING_KEYS = frozenset(spec.name for spec in fields(Settings))
TASK_OPTION_KEYS = frozenset({"retries", "backoff", "backoff_max", "jitter", "timeout", "rate_limit"})

# What the management commands give the worker as APP; see project.py.
APP_PATH = "runq.contrib.django.project:app"


@functools.cache
def get_app() -> App:
    """The project's App, built on first use from ``settings.RUNQ`` (or a RunqBackend's OPTIONS)."""
    from django.conf import settings

    from runq.app import App

    where, config = project_config(getattr(settings, "RUNQ", None), getattr(settings, "TASKS", None))
    return App(settings=runq_settings(config, where))


def project_config(runq: Any, tasks: Any) -> tuple[str, Any]:
    """Where the project's one runq configuration is, and what it is: ``RUNQ``, or the Settings
    fields in the OPTIONS of its ``RunqBackend`` entries in ``TASKS``. ``ImproperlyConfigured``
    when two of them disagree: all of them talk to one broker, through one App."""
    from django.core.exceptions import ImproperlyConfigured

    given: list[tuple[str, Any]] = [] if runq is None else [("RUNQ", runq)]
    for alias, params in (tasks or {}).items():
        if not (isinstance(params, Mapping) and str(params.get("BACKEND", "")).endswith(".RunqBackend")):
            continue
        try:
            part, _ = split_options(params.get("OPTIONS") or {})
        except ValueError as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]: {exc}") from None
        if part:
            given.append((f"TASKS[{alias!r}]['OPTIONS']", part))
    if not given:
        return "RUNQ", {}
    (first_name, first), *others = given
    for name, config in others:
        clash = sorted(k for k in config if not isinstance(first, Mapping) or first.get(k) != config[k])
        if clash:
            raise ImproperlyConfigured(
                f"{name} sets {', '.join(clash)} unlike {first_name}: the project has one runq App; configure it once"
            )
    return first_name, first


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A RunqBackend's OPTIONS → (Settings fields, task options); ``ValueError`` for any other key."""
    unknown = sorted(set(options) - SETTING_KEYS - TASK_OPTION_KEYS)
    if unknown:
        valid = ", ".join(sorted(SETTING_KEYS | TASK_OPTION_KEYS))
        raise ValueError(f"unknown OPTIONS key(s) {', '.join(unknown)}; valid: {valid}")
    return (
        {k: v for k, v in options.items() if k in SETTING_KEYS},
        {k: v for k, v in options.items() if k in TASK_OPTION_KEYS},
    )


def runq_settings(config: Any, where: str = "RUNQ") -> Settings:
    """``settings.RUNQ`` → runq Settings; a bad key or value is Django's ``ImproperlyConfigured``."""
    from django.core.exceptions import ImproperlyConfigured

    if not isinstance(config, Mapping):
        raise ImproperlyConfigured(f"{where} must be a dict of runq settings, got {type(config).__name__}")
    valid = sorted(SETTING_KEYS)
    unknown = sorted(set(config) - SETTING_KEYS)
    if unknown:
        raise ImproperlyConfigured(f"{where} has unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    values = dict(config)
    if isinstance(values.get("queues"), (list, tuple)):
        values["queues"] = tuple(values["queues"])
    try:
        return Settings.from_env(**values)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"{where}: {exc}") from None


def release_connections(app: App) -> None:
    """In a worker: wrap each synchronous task of ``app`` in ``close_old_connections()``, before
    and after, as Django does around a request (and Celery around a task), so a worker drops
    connections past ``CONN_MAX_AGE`` or broken by the server instead of failing every later
    task on them. Never inside a transaction (a task function called from a task in an atomic
    block). Async tasks are left as they are; Django's async ORM runs in its own threads."""
    for task in app.tasks.values():
        if not task.is_async and not getattr(task.fn, "runq_releases_connections", False):
            task.fn = _releasing(task.fn)


def _releasing(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        _release()
        try:
            return fn(*args, **kwargs)
        finally:
            _release()

    run.runq_releases_connections = True  # type: ignore[attr-defined]
    return run


def _release() -> None:
    from django.db import close_old_connections, connections

    if not any(conn.in_atomic_block for conn in connections.all(initialized_only=True)):
        close_old_connections()


def autodiscover() -> None:
    """Import ``tasks.py`` of every installed app that has one (as the admin finds ``admin.py``);
    an error inside one is raised, not hidden."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")


def delay_on_commit(task: Task[Any, Any] | BoundTask[Any, Any] | Signature, /, *args: Any, **kwargs: Any) -> None:
    """``task.delay(*args, **kwargs)`` when the current transaction commits; at once outside
    one; never if it rolls back. The arguments are checked now, so a bad one fails here.

    ``task`` may be a task, ``task.options(...)``, or a signature ``task.s(...)``; only with a
    signature, whose arguments are already given, may ``using=`` name another database.
    """
    from django.db import transaction

    using: str | None = None
    if isinstance(task, Signature):
        using = kwargs.pop("using", None)
        if args or kwargs:
            raise TypeError("delay_on_commit(signature) takes no task arguments: they are in the signature")
        signature = task
    elif isinstance(task, (Task, BoundTask)):
        signature = task.s(*args, **kwargs)
    else:
        raise TypeError(f"delay_on_commit takes a runq task, task.options(...) or task.s(...), got {task!r}")
    if signature.app is None:
        raise RuntimeError(f"signature of {signature.name!r} is not bound to an App")
    signature.app.message(signature.name, signature.args, signature.kwargs, signature.opts)
    transaction.on_commit(signature.delay, using=using)


def __getattr__(name: str) -> Any:
    if name == "app":
        return get_app()
    if name in ("RunqBackend", "RunqTask"):  # imports Django's Tasks framework only when named
        from runq.contrib.django import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
