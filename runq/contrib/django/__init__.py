"""runq in a Django project: add ``"runq.contrib.django"`` to ``INSTALLED_APPS``.

* ``RUNQ = {"url": ..., ...}`` in settings.py holds :class:`runq.Settings` fields. They win
  over ``RUNQ_*`` variables (as ``App(url)`` does) and lose to the flags of ``manage.py
  runq_worker``, so a project reads its secrets from the environment in settings.py, as usual.
* :func:`get_app` (also importable as ``app``) is the project's one App. Tasks live in each
  installed app's ``tasks.py`` (``from runq.contrib.django import app``; ``@app.task``), which
  are imported when Django is ready, so a worker knows every task without a list of them.
* ``manage.py runq_worker`` / ``runq_beat`` are ``runq worker`` / ``runq beat`` on that App,
  with the same flags.
* ``task.delay_on_commit(...)`` enqueues only once the surrounding ``transaction.atomic()``
  commits, so a worker never looks for a row that is not committed yet, or never will be.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from runq.settings import Settings

if TYPE_CHECKING:
    from runq.app import App
    from runq.tasks import Signature

__all__ = ["APP_PATH", "autodiscover", "delay_on_commit", "get_app", "release_connections", "runq_settings"]

# What the management commands give the worker as APP; see project.py.
APP_PATH = "runq.contrib.django.project:app"


@functools.cache
def get_app() -> App:
    """The project's App, built on first use from ``settings.RUNQ``."""
    from django.conf import settings

    from runq.app import App

    return App(settings=runq_settings(getattr(settings, "RUNQ", {})))


def runq_settings(config: Any) -> Settings:
    """``settings.RUNQ`` → runq Settings; a bad key or value is Django's ``ImproperlyConfigured``."""
    from django.core.exceptions import ImproperlyConfigured

    if not isinstance(config, Mapping):
        raise ImproperlyConfigured(f"RUNQ must be a dict of runq settings, got {type(config).__name__}")
    valid = sorted(spec.name for spec in fields(Settings))
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ImproperlyConfigured(f"RUNQ has unknown key(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    values = dict(config)
    if isinstance(values.get("queues"), (list, tuple)):
        values["queues"] = tuple(values["queues"])
    try:
        return Settings.from_env(**values)
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(f"RUNQ: {exc}") from None


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


def delay_on_commit(signature: Signature, using: str | None = None) -> None:
    """Enqueue ``signature`` when the current transaction on ``using`` commits; at once outside
    one; never if it rolls back. Its arguments are checked now, so a bad one fails here."""
    from django.db import transaction

    if signature.app is None:
        raise RuntimeError(f"signature of {signature.name!r} is not bound to an App")
    signature.app.message(signature.name, signature.args, signature.kwargs, signature.opts)
    transaction.on_commit(signature.delay, using=using)


def __getattr__(name: str) -> App:
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
