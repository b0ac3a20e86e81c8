"""What the CLI prints, as a user meets it (issue 19.6): on a terminal, into a closed pipe,
as JSON, for a dashboard that cannot start, in an empty directory, and for the demo."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import redis

import runq
from tests.conftest import ROOT, WorkerProcess, wait_until
from tests.support.servers import RedisServer, free_port
from tests.test_cli import cli, run_runq, user_error

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_terminal(*args: str, columns: int = 80) -> str:
    """``python -m runq ARGS`` on a pseudo-terminal ``columns`` wide; what it showed, escapes removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "RUNQ_URL")}
    env |= {"PYTHONPATH": str(ROOT), "TERM": "xterm-256color"}
    proc = subprocess.Popen([sys.executable, "-m", "runq", *args], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while data := _read(master):
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=60)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other side closed
        return b""


def test_list_on_a_narrow_terminal_never_cuts_a_task_id(sqlite_url: str) -> None:
    app = runq.App(sqlite_url)
    ids = [app.enqueue("shop.payments.charge_card", [i], queue="payments").id for i in range(3)]
    app.close()
    shown = in_terminal("list", "--url", sqlite_url, columns=80)
    for task_id in ids:
        assert task_id in shown, shown


def test_a_closed_stdout_ends_quietly_with_exit_0(sqlite_url: str) -> None:
    """``runq list --limit 1000 | head -1``: more output than a pipe holds, then the reader leaves."""
    app = runq.App(sqlite_url)
    app.enqueue_many([runq.Signature("tests.tasks.add", (i, i)) for i in range(1000)])
    app.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runq", "list", "--limit", "1000", "--url", sqlite_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().split()[0] == b"id"
    proc.stdout.close()
    error = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, error
    assert error == ""


def test_workers_json_gives_iso_8601_utc_times(sqlite_url: str, tmp_path: Path) -> None:
    worker = WorkerProcess(sqlite_url, tmp_path / "worker.log", "--pool", "thread")
    try:
        app = runq.App(sqlite_url)
        wait_until(app.workers, timeout=30)
        app.close()
        done = cli("workers", "--json", "--url", sqlite_url)
        assert done.exit_code == 0, done.output
        [shown] = json.loads(done.stdout)
        now = datetime.now(timezone.utc)
        for name in ("started_at", "last_seen"):
            when = datetime.fromisoformat(shown[name])
            assert when.utcoffset() == timedelta(0) and abs(now - when) < timedelta(minutes=1), shown
    finally:
        worker.stop()


def test_status_and_metrics_json_give_a_breakers_time_in_iso_8601(sqlite_url: str) -> None:
    app = runq.App(sqlite_url)
    app.broker  # noqa: B018 - create the database
    app.close()
    opens = datetime.now(timezone.utc) + timedelta(seconds=60)
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as db:  # as the broker keeps it: epoch seconds
        db.execute(
            "INSERT INTO runq_breakers (name, state, failures, open_until, probe_until) VALUES (?, ?, ?, ?, ?)",
            ("tests.tasks.picky", "open", 5, opens.timestamp(), 0.0),
        )
    for command in ("status", "metrics"):
        done = cli(command, "--json", "--url", sqlite_url)
        assert done.exit_code == 0, done.output
        shown = json.loads(done.stdout)["breakers"]["tests.tasks.picky"]
        assert abs(datetime.fromisoformat(shown["open_until"]) - opens) < timedelta(seconds=1), shown


# -- the dashboard ---------------------------------------------------------------------------


def test_dashboard_on_a_busy_port_says_so_before_any_login_url(sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_runq("dashboard", "tests.tasks:app", "--port", str(port), "--url", sqlite_url)
    user_error(done, 1, f"127.0.0.1:{port}", "in use")
    assert "token=" not in done.stderr + done.stdout


def test_dashboard_and_worker_fail_alike_for_an_app_that_does_not_exist(sqlite_url: str) -> None:
    for command in ("dashboard", "worker"):
        user_error(run_runq(command, "no_such_module:app", "--url", sqlite_url), 1, "no_such_module")
        user_error(run_runq(command, "tests.tasks", "--url", sqlite_url), 2, "module:attribute")


@contextmanager
def dashboard_process(url: str, log: Path, *args: str) -> Iterator[int]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runq", "dashboard", "tests.tasks:app", "--port", str(port), "--url", url, *args],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 401
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30, interval=0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()


def test_the_access_log_never_shows_the_token(sqlite_url: str, tmp_path: Path) -> None:
    secret = "s3cret-token-4242"
    log = tmp_path / "dashboard.log"
    with dashboard_process(sqlite_url, log, "--token", secret) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/?token={secret}").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/api/stats?x=1&token={secret}").status_code == 200
        wait_until(lambda: "/api/stats" in log.read_text(), timeout=10)
    text = log.read_text()
    assert secret not in text, text
    assert "GET /?token=*** " in text and "/api/stats?x=1&token=*** " in text, text


# -- an empty directory ----------------------------------------------------------------------

READ_ONLY = [["status"], ["list"], ["info", "default.0"], ["workers"], ["metrics"], ["result", "default.0"]]


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_commands_do_not_create_a_sqlite_database(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "runq.db"
    user_error(cli(*command, "--url", f"sqlite:///{path}"), 1, "no runq database", str(path))
    assert not path.exists()


def test_status_in_an_empty_directory_creates_nothing(tmp_path: Path) -> None:
    user_error(run_runq("status", cwd=tmp_path), 1, "no runq database", "sqlite:///runq.db")
    assert list(tmp_path.iterdir()) == []


# -- the demo, the description -----------------------------------------------------------------


def test_demo_refuses_a_redis_that_holds_data(redis_server: RedisServer) -> None:
    redis_server.flush()
    with redis.Redis.from_url(redis_server.url) as client:
        client.set("someone:else", "1")
        done = run_runq("demo", "--url", redis_server.url)
        user_error(done, 2, "holds", "empty")
        assert sorted(client.keys("*")) == [b"someone:else"]


def test_demo_on_redis_agrees_on_retries_and_leaves_it_empty(redis_server: RedisServer) -> None:
    redis_server.flush()
    done = run_runq("demo", "--json", "--url", redis_server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"], report["checks"]
    retried = sum(row["retried"] for row in report["by_task"].values())
    assert retried == report["counters"]["retried"] == 9  # 3 flaky e-mails once, 2 payments twice, the doomed twice
    with redis.Redis.from_url(redis_server.url) as client:
        assert client.dbsize() == 0


def test_help_and_package_description_name_every_broker() -> None:
    done = cli("--help")
    description = re.search(r'^description = "(.*)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert description is not None
    for text in (done.output, description[1]):
        assert all(name in text for name in ("SQLite", "Redis", "PostgreSQL")), text
