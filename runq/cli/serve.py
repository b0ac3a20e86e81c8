"""The ``runq`` commands that start something long-lived or heavy: ``demo``, ``dashboard``,
``bench`` and ``beat`` (``runq worker`` lives in :mod:`runq.cli` with the rest).

They register themselves on the group in commands.py; runq/cli/__init__.py imports this module.
"""

from __future__ import annotations

import errno
import sys

import click

from runq.cli import console as out
from runq.cli.commands import _load
from runq.cli.group import _app_settings, _settings, common, fail, main
from runq.logs import LEVELS, mask_url

# -- demo --------------------------------------------------------------------------------


@main.command()
@click.option("--keep", is_flag=True, help="Keep what the demo made (its SQLite file, logs; or on --url its tasks).")
@common
def demo(keep: bool, url: str | None, as_json: bool) -> None:
    """End to end in ~15 s on a fresh temporary SQLite file (or an empty --url, emptied again after)."""
    from runq.cli.demo import check_empty, run_demo

    explicit = url or click.get_current_context().meta.get("runq.group_url")
    if explicit:
        _settings(explicit)  # validate it, and name it in a broker error
        try:
            check_empty(explicit)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    try:
        code = run_demo(explicit, as_json=as_json, keep=keep)
    except RuntimeError as exc:
        fail(f"demo failed: {exc}")
    sys.exit(code)


@main.command()
@click.argument("app_path", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--url", default=None, metavar="URL", help="Broker URL (default: APP's, else RUNQ_URL, else sqlite).")
@click.option("--token", envvar="RUNQ_DASHBOARD_TOKEN", default=None, help="Require this token [default: random].")
@click.option("--no-token", is_flag=True, help="Serve without a token (loopback only, unless --insecure).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback address without a token.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, help="Another Host name to answer to (repeatable).")
def dashboard(
    app_path: str,
    host: str,
    port: int,
    url: str | None,
    token: str | None,
    no_token: bool,
    insecure: bool,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve the web dashboard, HTTP API and /metrics for APP (module:attribute).

    Without --token (or RUNQ_DASHBOARD_TOKEN) a random token is made and the login URL printed.
    """
    try:
        from click.core import ParameterSource

        from runq.dashboard import check_bind, listen, serve
        from runq.dashboard.server import login_url, new_token
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs its extra: pip install 'runq[dashboard]' ({exc})") from None
    if no_token and token and click.get_current_context().get_parameter_source("token") is ParameterSource.COMMANDLINE:
        raise click.UsageError("--token and --no-token exclude each other")
    token = None if no_token else token
    generated = not no_token and not token
    try:
        check_bind(host, token or ("generated" if generated else None), insecure)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    app = _load(app_path)  # as `runq worker` does: the same errors, the same exit codes
    app.configure(_app_settings(app, url))
    try:
        sock = listen(host, port)  # before the login URL: a busy port must not print one
    except OSError as exc:
        why = "the port is already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        fail(f"cannot serve the dashboard on {host}:{port}: {why} (choose another with --port)")
    port = sock.getsockname()[1]
    if generated:
        token = new_token()
        click.echo(f"runq dashboard: open {login_url(host, port, token)}", err=True)
    elif token is None:
        click.echo(f"runq dashboard: {login_url(host, port, None)} (no token: anyone on this machine)", err=True)
    serve(app, host, port, token, allowed_hosts, sock=sock)


@main.command()
@click.option("--tasks", type=click.IntRange(min=10), default=2000, show_default=True, help="Tasks for W1, W2, W4.")
@click.option("--workers", "processes", type=click.IntRange(min=1), default=2, show_default=True, help="Processes.")
@click.option("--round-trips", type=click.IntRange(min=1), default=100, show_default=True, help="W3 round trips.")
@click.option("--force", is_flag=True, help="Run on --url even if it holds data (the benchmark EMPTIES it).")
@common
def bench(tasks: int, processes: int, round_trips: int, force: bool, url: str | None, as_json: bool) -> None:
    """runq's own workloads, small: a fresh temporary SQLite file, or --url (an empty broker; it EMPTIES it).

    The side-by-side comparison with other task queues is `python -m bench` in runq's repository.
    """
    from runq.cli.bench import check_empty, smoke

    explicit = url or click.get_current_context().meta.get("runq.group_url")
    if explicit:
        _settings(explicit)  # validate it, and name it in a broker error
    if explicit and not force:
        try:
            check_empty(explicit)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    report = smoke(
        explicit, tasks, processes, round_trips, lambda step: click.echo(f"{step} ...", err=True), force=True
    )
    if as_json:
        out.echo_json(report.to_dict())
        return
    out.table(["workload", "result", "detail"], report.rows(), title=f"runq bench on {mask_url(report.url)}")


@main.command()
@click.argument("app_path", metavar="APP")
@click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False), default=None, help="[INFO]")
@common
def beat(app_path: str, log_level: str | None, url: str | None, as_json: bool) -> None:
    """Enqueue APP's periodic tasks at their ticks; run as many as you like (once per tick)."""
    from runq import logs
    from runq.worker.beat import run_beat

    overrides = dict(log_level=log_level, log_format="json" if as_json else None)
    _settings(url, **overrides)  # a bad RUNQ_* value or flag is a usage error before APP is imported
    app = _load(app_path)
    settings = _app_settings(app, url, **overrides)
    logs.configure(settings.log_level, settings.log_format)
    app.configure(settings)
    if not app.schedules:
        fail(f"{app_path} has no periodic tasks (@app.periodic)")
    sys.exit(run_beat(app))
