"""The ``runq`` group and what every command shares: options, settings, the App, errors.

User errors are one line on stderr and an exit code, never a traceback: 2 for bad
usage (click's own convention: bad flags, bad JSON, bad configuration), 1 for an
operation that could not be done (unknown task id, broker unreachable, a failed
task's result). Each command takes ``--url`` (else ``RUNQ_URL``) and ``--json``,
whose output shapes the README's CLI reference pins; without ``--json`` a terminal
gets rich tables and a pipe gets plain columns (see :mod:`runq.cli.console`).
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from runq.app import App
from runq.errors import BrokerUnavailable, RunqError
from runq.logs import mask_url, scrub
from runq.models import FINAL_STATUSES, Status, TaskInfo
from runq.options import visible
from runq.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
STATUSES = [s.value for s in Status]
FINAL = [s.value for s in Status if s in FINAL_STATUSES]
STATE_COLUMNS = ("pending", "scheduled", "waiting", "running", "succeeded", "failed", "cancelled")


def checked(check: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback applying a runq/options.py rule (the one Python and HTTP apply too):
    a refusal is a usage error (exit 2) naming the option."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except (TypeError, ValueError) as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"Error: {visible(message, keep=chr(10))}", err=True)  # a task's error message may hold an ESC
    sys.exit(code)


def broker_error(url: str, exc: BaseException) -> str:
    """Which broker failed and why, with its password masked (also inside the reason)."""
    reason = scrub(str(exc) or type(exc).__name__, url)
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
