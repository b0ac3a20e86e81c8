"""Celery's settings on runq (``app.conf``), what ``apply_async`` accepts, and which app is
current: the parts of the facade that its tasks, results and app all read."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, ClassVar

from runq.app import App
from runq.options import check_queue

__all__ = ["Config", "Current", "conf_of", "runq_url"]

SEND_NO_OPS = {
    "retry": "a producer raises runq.BrokerUnavailable after connect_timeout instead",
    "retry_policy": "see retry",
    "ignore_result": "runq keeps every result for result_ttl",
    "serializer": "JSON only",
    "compression": "runq stores JSON text",
    "add_to_parent": "runq keeps no parent/child trail",
}
SEND_REFUSED = {
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
    soft_time_limit: float | None
    imports: list[str]  # modules a worker imports (include=, imports, autodiscover_tasks)

    def __init__(self, app: App | None = None) -> None:
        fresh: dict[str, Any] = {
            "_app": app,
            "routes": [],
            "default_queue": None,
            "default_priority": None,
            "time_limit": None,
            "soft_time_limit": None,
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
            found.append((pattern, check_queue(queue)))
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
    "task_default_queue": lambda conf, v: setattr(conf, "default_queue", check_queue(v)),
    "task_default_priority": lambda conf, v: setattr(conf, "default_priority", v),
    "task_time_limit": lambda conf, v: setattr(conf, "time_limit", v),
    "task_soft_time_limit": lambda conf, v: setattr(conf, "soft_time_limit", v),
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


def conf_of(app: App) -> Config:
    """The Celery settings of ``app``: its own, or none for a plain runq App."""
    conf = getattr(app, "conf", None)
    return conf if isinstance(conf, Config) else Config()


class Current:
    """Celery's ``current_app``: the last Celery app made, or one made from the environment
    (``make`` is the Celery class; app.py sets it)."""

    app: ClassVar[App | None] = None
    make: ClassVar[Callable[[], App] | None] = None

    @classmethod
    def get(cls) -> App:
        if cls.app is None:
            if cls.make is None:
                raise RuntimeError("no Celery app: import runq.contrib.celery")
            cls.make()
        assert cls.app is not None
        return cls.app
