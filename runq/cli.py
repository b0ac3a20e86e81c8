"""The ``runq`` command line (SPEC §5).

User errors are one line on stderr and an exit code, never a traceback: 2 for bad
usage (click's own convention: bad flags, bad JSON, bad configuration), 1 for an
operation that could not be done (unknown task id, broker unreachable, a failed
task's result). Each command takes ``--url`` (else ``RUNQ_URL``) and ``--json``,
whose output shapes the README's CLI reference pins; without ``--json`` a terminal
gets rich tables and a pipe gets plain columns (see :mod:`runq.console`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from runq import console as out
from runq.app import App, load_app
from runq.errors import BrokerUnavailable, RunqError
from runq.logs import LEVELS, mask_url, password_of
from runq.models import FINAL_STATUSES, QueueStats, Stats, Status, TaskInfo, WorkerInfo, queue_of, to_datetime
from runq.settings import LOG_FORMATS, POOLS, Settings

F = TypeVar("F", bound=Callable[..., Any])
STATUSES = [s.value for s in Status]
FINAL = [s.value for s in Status if s in FINAL_STATUSES]
STATE_COLUMNS = ("pending", "scheduled", "waiting", "running", "succeeded", "failed", "cancelled")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def broker_error(url: str, exc: BaseException) -> str:
    """Which broker failed and why, with its password masked (also inside the reason)."""
    reason = str(exc) or type(exc).__name__
    password = password_of(url)
    if password:
        reason = reason.replace(password, "***")
    masked = mask_url(url)
    return reason if masked in reason else f"cannot reach the broker at {masked}: {reason}"


class RunqGroup(click.Group):
    """Turns runq's and the broker's failures into one clear line, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            done = super().invoke(ctx)
            sys.stdout.flush()  # a reader that left (``| head -1``) shows here, handled below
            return done
        except SystemExit:
            _flush_stdout()
            raise
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError as exc:
            if not _stdout_closed():
                fail(broker_error(_url_of(ctx), exc))
            _leave_quietly()
        except BrokerUnavailable as exc:
            fail(broker_error(_url_of(ctx), exc))
        except (ConnectionError, TimeoutError) as exc:
            fail(broker_error(_url_of(ctx), exc))
        except (RunqError, ValueError) as exc:
            fail(str(exc))
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):  # a redis-py error the broker did not wrap
                fail(broker_error(_url_of(ctx), exc))
            raise


def _stdout_closed() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # no real file behind it (tests), or no poll
        return False
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _leave_quietly() -> NoReturn:
    """The reader of our output left (``runq list | head -1``): done, exit 0 as ``ls`` or ``grep``
    would. What is still buffered goes nowhere, so the interpreter's last flush cannot fail."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # keep the exit code given
    except (OSError, ValueError):
        pass


def _url_of(ctx: click.Context) -> str:
    # ``meta`` is shared by a context and all its children: the command stored it there.
    return str(ctx.meta.get("runq.url") or "(no URL)")


def _settings(url: str | None = None, **overrides: Any) -> Settings:
    """Defaults ← RUNQ_* ← flags; a bad value is a usage error (exit 2) naming it."""
    url = url or click.get_current_context().meta.get("runq.group_url")
    try:
        settings = Settings.from_env(url=url, **overrides)
    except ValueError as exc:
        raise click.UsageError(f"bad configuration: {exc}") from None
    click.get_current_context().meta["runq.url"] = settings.url
    return settings


def _app_settings(app: App, url: str | None = None, **overrides: Any) -> Settings:
    """What a command that loads APP runs with: flags, else APP's own settings (``App(url)``,
    else ``RUNQ_*``), else the defaults (SPEC §1). The result flows down explicitly."""
    url = url or click.get_current_context().meta.get("runq.group_url")
    try:
        settings = app.settings.with_(url=url, **overrides)
    except ValueError as exc:
        raise click.UsageError(f"bad configuration: {exc}") from None
    click.get_current_context().meta["runq.url"] = settings.url
    return settings


def _app(url: str | None, create: bool = True) -> App:
    """An App on ``--url``, connected now so a bad URL fails before any work is done.

    ``create=False`` (commands that only read) refuses a SQLite file that does not exist
    instead of creating an empty database, which would hide a wrong directory or URL.
    """
    settings = _settings(url)
    if not create:
        _check_exists(settings.url)
    app = App(settings=settings)
    click.get_current_context().call_on_close(app.close)
    try:
        app.broker  # noqa: B018 - connect (and for SQLite, create the file) now
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--url' / RUNQ_URL") from None
    return app


def _check_exists(url: str) -> None:
    if not url.lower().startswith("sqlite:"):
        return
    from runq.brokers.sqlite import sqlite_path

    try:
        path = Path(sqlite_path(url)[0]).expanduser()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--url' / RUNQ_URL") from None
    if not path.exists():
        fail(
            f"no runq database at {url} ({path.absolute()} does not exist): nothing was enqueued there;"
            " check --url / RUNQ_URL or the directory you run runq in"
        )


def _known(app: App, task_id: str) -> TaskInfo:
    """The task, or exit 1 naming the id (also for a string that is not a runq id at all)."""
    try:
        info = app.info(task_id)
    except ValueError:
        info = None
    if info is None:
        fail(f"no task with id {task_id!r} (never enqueued, expired after its result TTL, or purged)")
    return info


def common(fn: F) -> F:
    """``--url`` and ``--json``, which every command takes."""
    fn = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")(fn)
    return click.option(
        "--url", default=None, metavar="URL", help="Broker URL (default: RUNQ_URL, else sqlite:///runq.db)."
    )(fn)


@click.group(cls=RunqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="runq")
@click.option("--url", default=None, metavar="URL", help="Broker URL for the command (it may also follow it).")
@click.option("--json", "as_json", is_flag=True, help="JSON output for the command (it may also follow it).")
@click.pass_context
def main(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """runq: a fast, reliable task queue (SQLite, Redis or PostgreSQL; JSON only)."""
    ctx.meta["runq.group_url"] = url
    if as_json:
        ctx.default_map = {name: {"as_json": True} for name in main.commands}


# -- worker ------------------------------------------------------------------------------


@main.command()
@click.argument("app_path", metavar="APP")
@click.option("--queues", "-Q", default=None, help="Comma-separated queues, drained in order [default].")
@click.option("--pool", type=click.Choice(POOLS, case_sensitive=False), default=None, help="Where tasks run [process].")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None, help="Tasks run at once.")
@click.option("--grace", type=click.FloatRange(min=0), default=None, help="Seconds to finish tasks at shutdown [30].")
@click.option("--lease", type=click.FloatRange(min=0.1), default=None, help="Seconds a claim is held unrenewed [30].")
@click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None, help="[INFO]")
@click.option("--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False), default=None, help="[text]")
@click.option("--beat", is_flag=True, help="Also enqueue APP's periodic tasks (as `runq beat`).")
@common
def worker(
    app_path: str,
    url: str | None,
    as_json: bool,
    queues: str | None,
    log_format: str | None,
    beat: bool,
    **flags: Any,
) -> None:
    """Run a worker for APP (module:attribute). --json logs JSON lines."""
    from runq import logs
    from runq.worker import Worker

    overrides = dict(
        queues=tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else None,
        log_format="json" if as_json else log_format,
        **flags,
    )
    _settings(url, **overrides)  # a bad RUNQ_* value or flag is a usage error before APP is imported
    app = _load(app_path)
    settings = _app_settings(app, url, **overrides)
    if settings.url.partition("://")[0].lower() == "memory":
        raise click.UsageError(
            "memory:// lives inside one process, so a worker cannot see its tasks: run them there with"
            " app.drain(), or give the worker a sqlite:///, redis:// or postgresql:// URL"
        )
    logs.configure(settings.log_level, settings.log_format)
    runner = Worker(app, app_path, settings)
    if beat:
        from runq.schedule import start_beat

        start_beat(app)
    sys.exit(runner.run())


def _load(app_path: str) -> App:
    """Import APP. A malformed APP is a usage error (2); a well-formed one naming nothing that
    exists fails like an unknown task id (1); a bug inside the user's module keeps its traceback."""
    module, colon, attribute = app_path.partition(":")
    if not (module and colon and attribute):
        raise click.BadParameter(f"must look like 'module:attribute', got {app_path!r}", param_hint="APP")
    try:
        return load_app(app_path)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            fail(f"cannot import {module!r} for APP {app_path!r}: {exc} (is it on PYTHONPATH?)")
        raise
    except (ValueError, TypeError) as exc:
        fail(f"bad APP {app_path!r}: {exc}")


# -- producing ---------------------------------------------------------------------------


def parse_arguments(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    """A JSON array is args, an object is kwargs (SPEC §5); anything else is a usage error."""
    if not text:
        return [], {}
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})", param_hint="ARGUMENTS") from None
    if isinstance(parsed, list):
        return parsed, {}
    if isinstance(parsed, dict):
        return [], parsed
    raise click.BadParameter("must be a JSON array (args) or object (kwargs)", param_hint="ARGUMENTS")


@main.command()
@click.argument("name")
@click.argument("arguments", required=False, default=None)
@click.option("--queue", "-q", default=None, help="Queue [the task's, else default].")
@click.option("--priority", "-p", type=click.IntRange(-100, 100), default=None, help="-100..100, higher first [0].")
@click.option("--delay", type=click.FloatRange(min=0), default=None, help="Seconds before it may start.")
@click.option("--key", default=None, help="Idempotency key: a second enqueue returns the first task.")
@common
def enqueue(name: str, arguments: str | None, url: str | None, as_json: bool, **options: Any) -> None:
    """Enqueue task NAME with ARGUMENTS: a JSON array (args) or object (kwargs)."""
    args, kwargs = parse_arguments(arguments)
    app = _app(url)
    chosen = {option: value for option, value in options.items() if value is not None}
    try:
        handle = app.enqueue(name, args, kwargs, **chosen)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        info = app.info(handle.id)
        out.echo_json({"id": handle.id, "name": name, "status": info.status.value if info else None})
    else:
        click.echo(handle.id)


# -- one task ----------------------------------------------------------------------------


@main.command()
@click.argument("task_id", metavar="ID")
@common
def info(task_id: str, url: str | None, as_json: bool) -> None:
    """Everything about one task."""
    found = _known(_app(url, create=False), task_id)
    if as_json:
        out.echo_json(found.to_dict())
        return
    error = found.error or {}
    items = [(name, getattr(found, name)) for name in found.to_dict() if name != "error"]
    items.append(("error", f"{error.get('type')}: {error.get('message')}" if error else None))
    out.pairs(items)
    if error.get("traceback"):
        click.echo(str(error["traceback"]).rstrip())


@main.command()
@click.argument("task_id", metavar="ID")
@click.option("--wait", type=click.FloatRange(min=0), default=0.0, help="Seconds to wait for it to finish [0].")
@common
def result(task_id: str, wait: float, url: str | None, as_json: bool) -> None:
    """A task's result. Exit 0 if it succeeded; 1 if it failed, was cancelled or is not done."""
    app = _app(url, create=False)
    found = _known(app, task_id)
    if wait and not found.status.final:
        found = app.broker.wait(task_id, wait) or found
    if as_json:
        out.echo_json({"id": found.id, "status": found.status.value, "result": found.result, "error": found.error})
    elif found.status is Status.SUCCEEDED:
        click.echo(json.dumps(found.result, ensure_ascii=False))
    if found.status is Status.SUCCEEDED:
        return
    error = found.error or {}
    if found.status is Status.FAILED:
        fail(f"task {task_id} failed: {error.get('type')}: {error.get('message')}")
    if found.status is Status.CANCELLED:
        fail(f"task {task_id} was cancelled" + (f": {error['message']}" if error.get("message") else ""))
    hint = f"after waiting {wait:g}s" if wait else "(use --wait SECONDS to wait for it)"
    fail(f"task {task_id} is still {found.status.value} {hint}")


@main.command()
@click.argument("task_id", metavar="ID")
@common
def cancel(task_id: str, url: str | None, as_json: bool) -> None:
    """Cancel a task that has not finished (exit 1 if it already had)."""
    app = _app(url)
    found = _known(app, task_id)
    done = app.cancel(task_id)
    if as_json:
        out.echo_json({"id": task_id, "cancelled": done, "status": "cancelled" if done else found.status.value})
    elif done:
        click.echo(f"cancelled {task_id}")
    if not done:
        fail(f"task {task_id} was not cancelled: it already {_ended(app, task_id, found)}")


def _ended(app: App, task_id: str, before: TaskInfo) -> str:
    now = app.info(task_id) or before
    return f"finished as {now.status.value}"


@main.command()
@click.argument("task_id", metavar="ID", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Every task in the dead-letter set (status failed).")
@click.option("--queue", "-q", default=None, help="With --all: only this queue.")
@common
def retry(task_id: str | None, retry_all: bool, queue: str | None, url: str | None, as_json: bool) -> None:
    """Put a failed or cancelled task back to pending, attempts reset (ID or --all)."""
    if bool(task_id) == retry_all:
        raise click.UsageError("give a task ID or --all (not both)")
    app = _app(url)
    if task_id is not None:
        found = _known(app, task_id)
        if not app.retry(task_id):
            fail(f"task {task_id} is {found.status.value}: only failed or cancelled tasks can be retried")
        ids = [task_id]
    else:
        ids = _retry_all(app, queue)
    if as_json:
        out.echo_json({"retried": ids})
    else:
        click.echo(f"retried {len(ids)} task(s)")


def _retry_all(app: App, queue: str | None) -> list[str]:
    seen: set[str] = set()
    retried: list[str] = []
    while batch := [t.id for t in app.list(Status.FAILED, queue, 1000) if t.id not in seen]:
        seen.update(batch)
        retried += [task_id for task_id in batch if app.retry(task_id)]
    return retried


# -- many tasks --------------------------------------------------------------------------


@main.command(name="list")
@click.argument("status", required=False, type=click.Choice(STATUSES, case_sensitive=False))
@click.option("--queue", "-q", default=None, help="Only this queue.")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True)
@common
def list_(status: str | None, queue: str | None, limit: int, url: str | None, as_json: bool) -> None:
    """Tasks (in STATUS, if given), newest first."""
    tasks = _app(url, create=False).list(status, queue, limit)
    if as_json:
        out.echo_json([t.to_dict() for t in tasks])
        return
    rows = [
        (t.id, t.status.value, t.name, t.priority, t.attempts, t.enqueued_at, t.finished_at or t.eta, _brief(t))
        for t in tasks
    ]
    out.table(("id", "status", "name", "priority", "attempts", "enqueued", "finished / eta", "result / error"), rows)


def _brief(task: TaskInfo) -> str:
    if task.error:
        text = f"{task.error.get('type')}: {task.error.get('message')}"
    elif task.status is Status.SUCCEEDED:
        text = json.dumps(task.result, ensure_ascii=False, default=str)
    else:
        return ""
    return text if len(text) <= 60 else text[:57] + "..."


@main.command()
@click.option(
    "--status",
    type=click.Choice([*FINAL, "finished"], case_sensitive=False),
    default="failed",
    show_default=True,
    help="Which final tasks; 'finished' is all three.",
)
@click.option("--queue", "-q", default=None, help="Only this queue.")
@common
def purge(status: str, queue: str | None, url: str | None, as_json: bool) -> None:
    """Delete finished tasks: by default the dead-letter set (failed)."""
    removed = _app(url).purge(None if status == "finished" else status, queue)
    if as_json:
        out.echo_json({"purged": removed, "status": status, "queue": queue})
    else:
        click.echo(f"purged {removed} {status} task(s)" + (f" from {queue}" if queue else ""))


# -- the whole queue ---------------------------------------------------------------------


def _totals(stats: Stats) -> QueueStats:
    return QueueStats(**{name: sum(getattr(q, name) for q in stats.queues.values()) for name in STATE_COLUMNS})


def _started_only(stats: Stats, live: list[WorkerInfo]) -> Stats:
    """``running`` as a user means it: started. A broker marks a task running when a worker
    claims it, also when the worker took it ahead for a slot that is still busy; the
    workers' heartbeats (at most a few seconds old) say which ones those are."""
    ahead: Counter[str] = Counter()
    for worker in live:
        for task_id in worker.prefetched:
            with contextlib.suppress(ValueError):
                ahead[queue_of(task_id)] += 1
    queues = {
        name: dataclasses.replace(q, running=max(0, q.running - ahead[name])) if ahead[name] else q
        for name, q in stats.queues.items()
    }
    return dataclasses.replace(stats, queues=queues)


def _queue_table(stats: Stats) -> None:
    rows = [(name, *(getattr(q, s) for s in STATE_COLUMNS)) for name, q in sorted(stats.queues.items())]
    total = _totals(stats)
    out.table(("queue", *STATE_COLUMNS), rows, footer=("total", *(getattr(total, s) for s in STATE_COLUMNS)))


@main.command()
@common
def status(url: str | None, as_json: bool) -> None:
    """Tasks per queue and state, and how many workers are live."""
    app = _app(url, create=False)
    live = app.workers()
    stats = _started_only(app.stats(), live)
    prefetched = sum(len(w.prefetched) for w in live)
    if as_json:
        queues = {name: vars(q) for name, q in sorted(stats.queues.items())}
        out.echo_json(
            {
                "queues": queues,
                "totals": vars(_totals(stats)),
                "workers": len(live),
                "prefetched": prefetched,
                "breakers": _breakers_json(stats.breakers),
            }
        )
        return
    _queue_table(stats)
    running = sum(len(w.current) for w in live)
    out.line(
        f"{len(live)} worker(s) live, {running} running, {prefetched} prefetched (claimed, not started); "
        f"throughput {out.rate(stats.throughput)}",
        "bold",
    )
    if stats.breakers:
        out.line(
            "breakers: "
            + ", ".join(f"{name} {b['state']} ({b['failures']} failed)" for name, b in stats.breakers.items())
        )


@main.command()
@common
def metrics(url: str | None, as_json: bool) -> None:
    """Counts, counters, wait/run latency p50/p95/p99 (last 5 min) and throughput (last minute)."""
    app = _app(url, create=False)
    stats = _started_only(app.stats(), app.workers())
    if as_json:
        out.echo_json({**stats.to_dict(), "breakers": _breakers_json(stats.breakers)})
        return
    _queue_table(stats)
    counters = stats.counters
    out.table(tuple(counters), [tuple(counters.values())], title="counters")
    rows = [(kind, *(out.seconds(getattr(p, q)) for q in ("p50", "p95", "p99"))) for kind, p in _latency(stats)]
    out.table(("latency, last 5 min", "p50", "p95", "p99"), rows)
    out.line(f"throughput {out.rate(stats.throughput)} (tasks finished, last minute)", "bold")


def _latency(stats: Stats) -> list[tuple[str, Any]]:
    return [("wait (ready → started)", stats.wait), ("run (started → finished)", stats.run)]


@main.command()
@common
def workers(url: str | None, as_json: bool) -> None:
    """Live workers (by heartbeat) and what they are running."""
    found = _app(url, create=False).workers()
    if as_json:
        out.echo_json([_worker_dict(w) for w in found])
        return
    now = time.time()
    rows = [
        (
            w.id,
            w.pool,
            w.concurrency,
            ",".join(w.queues),
            len(w.current),
            len(w.prefetched),
            w.counts.get("succeeded", 0),
            w.counts.get("retried", 0),
            w.counts.get("failed", 0),
            f"{now - w.started_at:.0f}s",
        )
        for w in found
    ]
    columns = (
        *("worker", "pool", "concurrency", "queues", "running", "prefetched"),
        *("succeeded", "retried", "failed", "up"),
    )
    out.table(columns, rows)
    if not found:
        out.line("no live workers", "yellow")


def _worker_dict(worker: WorkerInfo) -> dict[str, Any]:
    data = dict(vars(worker))
    data["queues"], data["current"] = list(worker.queues), list(worker.current)
    data["started_at"], data["last_seen"] = _iso(worker.started_at), _iso(worker.last_seen)
    data["prefetched"] = list(worker.prefetched)
    return data


def _iso(timestamp: float | None) -> str | None:
    """Every ``--json`` time is ISO 8601 UTC, as the README says (brokers keep epoch seconds)."""
    when = to_datetime(float(timestamp)) if timestamp else None
    return when.isoformat() if when else None


def _breakers_json(breakers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {**state, "open_until": _iso(state.get("open_until"))} for name, state in breakers.items()}


from runq import cli_serve  # noqa: E402, F401 - registers demo, dashboard, bench and beat on main
