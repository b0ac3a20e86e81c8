"""The commands about tasks: run a worker, enqueue, and look at or steer one task or many."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from runq import options as rules
from runq.app import App, load_app
from runq.cli import console as out
from runq.cli.group import FINAL, STATUSES, _app, _app_settings, _known, _settings, checked, common, fail, main
from runq.logs import LEVELS
from runq.models import Status, TaskInfo
from runq.settings import LOG_FORMATS, MAX_SETTLE_BATCH, POOLS

# -- worker ------------------------------------------------------------------------------


@main.command()
@click.argument("app_path", metavar="APP")
@click.option(
    "--queues",
    "-Q",
    callback=checked(rules.parse_queues),
    default=None,
    help="Comma-separated queues, drained in order [default].",
)
@click.option("--pool", type=click.Choice(POOLS, case_sensitive=False), default=None, help="Where tasks run [process].")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None, help="Tasks run at once.")
@click.option("--grace", type=click.FloatRange(min=0), default=None, help="Seconds to finish tasks at shutdown [30].")
@click.option("--lease", type=click.FloatRange(min=0.1), default=None, help="Seconds a claim is held unrenewed [30].")
@click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None, help="[INFO]")
@click.option("--log-format", type=click.Choice(LOG_FORMATS, case_sensitive=False), default=None, help="[text]")
@click.option(
    "--max-tasks-per-child", type=click.IntRange(min=0), default=None,
    help="Process pool: replace a child after this many tasks [0: never].",
)  # fmt: skip
@click.option(
    "--max-memory-per-child", type=click.IntRange(min=0), default=None, metavar="MIB",
    help="Process pool: replace a child once its memory peaked at MIB [0: never].",
)  # fmt: skip
@click.option(
    "--settle-batch", type=click.IntRange(min=0, max=MAX_SETTLE_BATCH), default=None, metavar="N",
    help="Runs started and not settled, beyond one per slot: what a SIGKILL can run twice [256].",
)  # fmt: skip
@click.option(
    "--settle-interval", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
    help="Wait up to this long for N outcomes to settle together [0].",
)  # fmt: skip
@click.option("--beat", is_flag=True, help="Also enqueue APP's periodic tasks (as `runq beat`).")
@common
def worker(
    app_path: str,
    url: str | None,
    as_json: bool,
    queues: tuple[str, ...] | None,
    log_format: str | None,
    beat: bool,
    **flags: Any,
) -> None:
    """Run a worker for APP (module:attribute). --json logs JSON lines."""
    from runq import logs
    from runq.worker import Worker

    overrides = dict(
        queues=queues,
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
        from runq.worker.beat import start_beat

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
@click.argument("name", callback=checked(rules.check_task_name))
@click.argument("arguments", required=False, default=None)
@click.option("--queue", "-q", callback=checked(rules.check_queue), help="Queue [the task's, else default].")
@click.option("--priority", "-p", type=int, callback=checked(rules.check_priority), help="-100..100, higher first [0].")
@click.option(
    "--delay", type=float, callback=checked(rules.check_delay), help="Seconds before it may start (<= 10 years)."
)
@click.option(
    "--key", callback=checked(rules.check_key), help="Idempotency key: a second enqueue returns the first task."
)
@click.option(
    "--timeout", type=float, callback=checked(lambda v: rules.check_seconds("timeout", v, zero=False)),
    help="Seconds before the run is stopped.",
)  # fmt: skip
@click.option(
    "--soft-timeout", type=float, callback=checked(rules.check_soft_timeout),
    help="Seconds before runq.SoftTimeout is raised inside the task (< --timeout).",
)  # fmt: skip
@click.option(
    "--expires", type=float, callback=checked(rules.check_expires), help="Seconds: not started by then, cancelled."
)
@click.option(
    "--debounce", type=float, callback=checked(rules.check_debounce), help="Seconds; with --key: replace, not add."
)
@click.option(
    "--concurrency", callback=checked(rules.check_concurrency), help="Runs at once: N, or N:ARG (per value of ARG)."
)
@click.option(
    "--app", "app_path", metavar="APP", default=None, help="module:attribute: NAME gets its task's options and checks."
)
@common
def enqueue(
    name: str, arguments: str | None, app_path: str | None, url: str | None, as_json: bool, **options: Any
) -> None:
    """Enqueue task NAME with ARGUMENTS: a JSON array (args) or object (kwargs).

    With --app, NAME must be one of APP's tasks (close names are suggested), takes its
    queue and options, and ARGUMENTS must fit its signature; without, it is sent as given.
    """
    args, kwargs = parse_arguments(arguments)
    app = _producer(app_path, url)
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


def _producer(app_path: str | None, url: str | None) -> App:
    """APP (its tasks known: by-name options and checks) on the resolved URL, else a bare App."""
    if app_path is None:
        return _app(url)
    app = _load(app_path)
    app.configure(_app_settings(app, url))
    click.get_current_context().call_on_close(app.close)
    return app


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
        click.echo(rules.visible(str(error["traceback"]).rstrip(), keep="\n"))


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
        click.echo(rules.visible(json.dumps(found.result, ensure_ascii=False)))
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
@click.option("--queue", "-q", callback=checked(rules.check_queue), help="Only this queue.")
@common
def purge(status: str, queue: str | None, url: str | None, as_json: bool) -> None:
    """Delete finished tasks: by default the dead-letter set (failed)."""
    removed = _app(url).purge(None if status == "finished" else status, queue)
    if as_json:
        out.echo_json({"purged": removed, "status": status, "queue": queue})
    else:
        click.echo(f"purged {removed} {status} task(s)" + (f" from {queue}" if queue else ""))
