"""The ``runq`` command line (SPEC §5).

User errors are one line on stderr and an exit code, never a traceback:
2 for bad usage (click's own convention), 1 for a failed operation.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from runq import logs
from runq.app import App, load_app
from runq.errors import BrokerUnavailable, RunqError, TaskCancelled, TaskFailed
from runq.models import TaskInfo
from runq.settings import POOLS, Settings

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def user_errors(fn: F) -> F:
    """Turn runq's and the broker's failures into one clear line and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokerUnavailable as exc:
            _fail(f"broker unavailable: {exc}")
        except (RunqError, ValueError, TypeError, ImportError) as exc:
            _fail(str(exc))
        return None

    return wrapper  # type: ignore[return-value]


def _app(url: str | None) -> App:
    return App(settings=Settings.from_env(url=url))


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _echo_info(info: TaskInfo, as_json: bool) -> None:
    if as_json:
        _echo_json(info.to_dict())
        return
    for name, value in info.to_dict().items():
        if value is not None:
            click.echo(f"{name:12} {value}")


url_option = click.option("--url", envvar="RUNQ_URL", default=None, help="Broker URL (default: RUNQ_URL or sqlite).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runq")
def main() -> None:
    """runq: a fast, reliable task queue."""


@main.command()
@click.argument("app_path", metavar="APP")
@url_option
@click.option("--queues", "-Q", default=None, help="Comma-separated queues, drained in order (default: default).")
@click.option("--pool", type=click.Choice(POOLS), default=None, help="Where tasks run (default: process).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None, help="Tasks run at once.")
@click.option("--grace", type=click.FloatRange(min=0), default=None, help="Seconds to finish tasks at shutdown.")
@click.option("--lease", type=click.FloatRange(min=0.1), default=None, help="Seconds a claim is held unrenewed.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")
@user_errors
def worker(
    app_path: str,
    url: str | None,
    queues: str | None,
    pool: str | None,
    concurrency: int | None,
    grace: float | None,
    lease: float | None,
    log_level: str | None,
) -> None:
    """Run a worker for APP (module:attribute)."""
    from runq.worker import Worker

    app = load_app(app_path)
    settings = app.settings.with_(
        url=url,
        queues=tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else None,
        pool=pool,
        concurrency=concurrency,
        grace=grace,
        lease=lease,
        log_level=log_level,
    )
    logs.configure(settings.log_level, settings.log_format)
    sys.exit(Worker(app, app_path, settings).run())


@main.command()
@click.argument("name")
@click.argument("arguments", required=False, default=None)
@click.option("--queue", default=None)
@click.option("--priority", type=int, default=None)
@click.option("--delay", type=float, default=None)
@click.option("--key", default=None)
@url_option
@json_option
@user_errors
def enqueue(
    name: str,
    arguments: str | None,
    queue: str | None,
    priority: int | None,
    delay: float | None,
    key: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Enqueue task NAME; ARGUMENTS is a JSON array (args) or object (kwargs)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    if arguments:
        try:
            parsed = json.loads(arguments)
        except ValueError as exc:
            raise click.UsageError(f"ARGUMENTS is not valid JSON: {exc}") from None
        if isinstance(parsed, list):
            args = parsed
        elif isinstance(parsed, dict):
            kwargs = parsed
        else:
            raise click.UsageError("ARGUMENTS must be a JSON array (args) or object (kwargs)")
    options = {"queue": queue, "priority": priority, "delay": delay, "key": key}
    handle = _app(url).enqueue(name, args, kwargs, **{k: v for k, v in options.items() if v is not None})
    _echo_json({"id": handle.id}) if as_json else click.echo(handle.id)


@main.command()
@click.argument("task_id")
@url_option
@json_option
@user_errors
def info(task_id: str, url: str | None, as_json: bool) -> None:
    """Show one task."""
    found = _app(url).info(task_id)
    if found is None:
        _fail(f"no task with id {task_id}")
    else:
        _echo_info(found, as_json)


@main.command()
@click.argument("task_id")
@click.option("--wait", type=float, default=None, help="Seconds to wait for the task to finish.")
@url_option
@json_option
@user_errors
def result(task_id: str, wait: float | None, url: str | None, as_json: bool) -> None:
    """Print a task's result (waiting up to --wait seconds)."""
    app = _app(url)
    if app.info(task_id) is None:
        _fail(f"no task with id {task_id}")
    try:
        value = app.handle(task_id).result(timeout=wait or 0.0)
    except TimeoutError as exc:
        _fail(str(exc))
    except (TaskFailed, TaskCancelled) as exc:
        _fail(str(exc))
    _echo_json(value) if as_json else click.echo(json.dumps(value))


@main.command(name="list")
@click.argument("status", required=False, default=None)
@click.option("--queue", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=20)
@url_option
@json_option
@user_errors
def list_(status: str | None, queue: str | None, limit: int, url: str | None, as_json: bool) -> None:
    """List tasks, newest first, optionally only those in STATUS."""
    tasks = _app(url).list(status, queue, limit)
    if as_json:
        _echo_json([t.to_dict() for t in tasks])
        return
    for t in tasks:
        click.echo(f"{t.id}  {t.status.value:9}  {t.name}  attempts={t.attempts}")


@main.command()
@click.argument("task_id")
@url_option
@json_option
@user_errors
def cancel(task_id: str, url: str | None, as_json: bool) -> None:
    """Cancel a task that has not finished."""
    app = _app(url)
    if app.info(task_id) is None:
        _fail(f"no task with id {task_id}")
    done = app.cancel(task_id)
    _echo_json({"id": task_id, "cancelled": done}) if as_json else click.echo(
        "cancelled" if done else "not cancelled: already finished"
    )


@main.command()
@click.argument("task_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Retry every task in the dead-letter set.")
@url_option
@json_option
@user_errors
def retry(task_id: str | None, retry_all: bool, url: str | None, as_json: bool) -> None:
    """Put a failed task (or with --all, every failed task) back to pending."""
    if bool(task_id) == retry_all:
        raise click.UsageError("give a task ID or --all")
    app = _app(url)
    if retry_all:
        ids = []
        while batch := [t.id for t in app.list("failed", None, 1000) if t.id not in ids]:
            ids += [i for i in batch if app.retry(i)]
    else:
        assert task_id is not None
        if app.info(task_id) is None:
            _fail(f"no task with id {task_id}")
        ids = [task_id] if app.retry(task_id) else []
    _echo_json({"retried": ids}) if as_json else click.echo(f"retried {len(ids)} task(s)")


@main.command()
@click.option("--status", default="failed", show_default=True)
@click.option("--queue", default=None)
@url_option
@json_option
@user_errors
def purge(status: str, queue: str | None, url: str | None, as_json: bool) -> None:
    """Delete finished tasks in STATUS (the dead-letter set by default)."""
    removed = _app(url).purge(status, queue)
    _echo_json({"purged": removed}) if as_json else click.echo(f"purged {removed} task(s)")


@main.command()
@url_option
@json_option
@user_errors
def status(url: str | None, as_json: bool) -> None:
    """Counts per queue and state, counters and latency."""
    stats = _app(url).stats()
    if as_json:
        _echo_json(stats.to_dict())
        return
    click.echo(f"{'queue':20} pending scheduled waiting running succeeded failed cancelled")
    for name, q in stats.queues.items():
        click.echo(
            f"{name:20} {q.pending:7} {q.scheduled:9} {q.waiting:7} {q.running:7}"
            f" {q.succeeded:9} {q.failed:6} {q.cancelled:9}"
        )
    click.echo(" ".join(f"{k}={v}" for k, v in stats.counters.items()))
    click.echo(f"throughput {stats.throughput:.1f}/s")


@main.command()
@url_option
@json_option
@user_errors
def workers(url: str | None, as_json: bool) -> None:
    """Live workers and what they are running."""
    found = _app(url).workers()
    if as_json:
        _echo_json([vars(w) for w in found])
        return
    for w in found:
        click.echo(f"{w.id}  {w.pool} x{w.concurrency}  queues={','.join(w.queues)}  running={len(w.current)}")


@main.command()
@click.argument("app_path", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless --token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--url", envvar="RUNQ_URL", default=None, help="Broker URL (default: RUNQ_URL or sqlite).")
@click.option("--token", envvar="RUNQ_DASHBOARD_TOKEN", default=None, help="Require this bearer token.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback address without a token.")
def dashboard(app_path: str, host: str, port: int, url: str | None, token: str | None, insecure: bool) -> None:
    """Serve the web dashboard, HTTP API and /metrics for APP (module:attribute)."""
    try:
        from runq.dashboard import check_bind, serve
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs its extra: pip install 'runq[dashboard]' ({exc})") from None
    try:
        check_bind(host, token, insecure)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        app = load_app(app_path)
    except (ImportError, ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="APP") from None
    app.settings = app.settings.with_(url=url)  # the broker connects lazily: not yet connected
    serve(app, host, port, token)
