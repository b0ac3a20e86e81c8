"""PostgreSQL only: a task enqueued inside the application's transaction exists if and only if
that transaction commits (``broker.using(connection)``), with a real worker draining the queue."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import runq
from tests.conftest import WorkerProcess

psycopg = pytest.importorskip("psycopg")

from runq.brokers.postgres import postgres_conninfo  # noqa: E402 - after the importorskip


def _sig(app: runq.App, *args: int) -> runq.Signature:
    return runq.Signature("add", tuple(args), app=app)


@pytest.fixture
def pg_url(postgres_database: str) -> str:
    return f"{postgres_database}?schema=t_{secrets.token_hex(6)}"


@pytest.fixture
def pg_app(pg_url: str) -> Iterator[runq.App]:
    app = runq.App(pg_url)
    app.broker.ping()  # create the schema before the application's own connection uses it
    yield app
    app.close()


@pytest.fixture
def connection(pg_url: str) -> Iterator[Any]:
    conninfo, _ = postgres_conninfo(pg_url)
    with psycopg.connect(conninfo) as conn:
        yield conn


def test_rolled_back_transaction_leaves_no_task(pg_app: runq.App, connection: Any) -> None:
    with pg_app.broker.using(connection):  # type: ignore[attr-defined]
        single = pg_app.enqueue("add", [1, 2])
        many = pg_app.enqueue_many([_sig(pg_app, i, i) for i in range(3)])
        last = runq.chain(_sig(pg_app, 1, 2), _sig(pg_app, 3)).delay()
    assert pg_app.info(single.id) is None  # not visible outside the open transaction
    connection.rollback()
    for handle in [single, *many, last]:
        assert pg_app.info(handle.id) is None
    assert pg_app.list("pending") == [] and pg_app.list("waiting") == []


def test_committed_transaction_runs_each_task_once(
    pg_app: runq.App, pg_url: str, connection: Any, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(pg_url, "--pool", "thread")
    with pg_app.broker.using(connection):  # type: ignore[attr-defined]
        single = pg_app.enqueue("add", [1, 2])
        many = pg_app.enqueue_many([_sig(pg_app, i, i) for i in range(3)])
        last = runq.chain(_sig(pg_app, 1, 2), _sig(pg_app, 3)).delay()
    assert pg_app.info(single.id) is None
    connection.commit()
    assert last.result(timeout=30) == 6
    assert single.result(timeout=30) == 3
    assert [h.result(timeout=30) for h in many] == [0, 2, 4]
    for handle in [single, *many]:
        info = handle.info()
        assert info is not None and info.attempts == 1


def test_autocommit_connection_needs_an_explicit_transaction(pg_app: runq.App, pg_url: str) -> None:
    conninfo, _ = postgres_conninfo(pg_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        with pytest.raises(RuntimeError, match="autocommit"), pg_app.broker.using(conn):  # type: ignore[attr-defined]
            pg_app.enqueue("add", [1, 2])
        with pytest.raises(ZeroDivisionError), conn.transaction(), pg_app.broker.using(conn):  # type: ignore[attr-defined]
            inside = pg_app.enqueue("add", [1, 2])
            1 / 0  # noqa: B018 - the application fails after enqueueing: its transaction rolls back
    assert pg_app.info(inside.id) is None
    assert pg_app.list("pending") == []
