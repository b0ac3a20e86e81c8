"""PostgreSQL only: a task enqueued inside the application's transaction exists if and only if
that transaction commits (``broker.using(connection)``), with a real worker draining the queue."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import runq
from tests.conftest import WorkerProcess, wait_until

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


def _rows(pg_url: str) -> int:
    conninfo, schema = postgres_conninfo(pg_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".tasks').fetchone()
    assert row is not None
    return int(row[0])


def _housekeep(app: runq.App) -> None:
    """One housekeeping pass, as a worker's claim runs it (at most once a second otherwise)."""
    broker = app.broker
    broker._last_cleanup = 0.0  # type: ignore[attr-defined]
    broker.claim(["nothing-here"], "hk", 1, 30)


def test_expired_results_are_pruned_in_batches_skipping_locked_rows(pg_app: runq.App, pg_url: str) -> None:
    from runq.brokers.postgres import CLEANUP_BATCH
    from runq.models import Outcome

    total = CLEANUP_BATCH * 2 + 500
    noop = runq.Signature("noop", (), app=pg_app).options(result_ttl=0.05)
    for _ in range(total // 500):
        pg_app.enqueue_many([noop] * 500)
    claims = pg_app.broker.claim(["default"], "w", total, 30)
    assert len(claims) == total
    pg_app.broker.settle([Outcome(c.id, c.token, "succeeded", result="null", result_ttl=0.05) for c in claims])
    first = claims[0].id
    wait_until(lambda: pg_app.info(first) is None)  # expired: hidden at once, deleted by housekeeping
    conninfo, schema = postgres_conninfo(pg_url)
    with psycopg.connect(conninfo) as holder:  # another transaction holds one expired row
        holder.execute(f'SELECT 1 FROM "{schema}".tasks WHERE id = %s FOR UPDATE', (first,))
        sweeper = threading.Thread(target=_housekeep, args=(pg_app,), daemon=True)
        sweeper.start()
        sweeper.join(timeout=30)
        assert not sweeper.is_alive(), "housekeeping waited for a locked row"  # SKIP LOCKED
        assert _rows(pg_url) == total - CLEANUP_BATCH  # one bounded batch per pass: short locks
        _housekeep(pg_app)
        _housekeep(pg_app)
        assert _rows(pg_url) == 1  # all but the locked row
    _housekeep(pg_app)
    assert _rows(pg_url) == 0


def test_libpq_options_in_the_url_reach_the_server(pg_url: str) -> None:
    """A space in a libpq parameter (options=-c%20name%3Dvalue) stays a space: the schema
    parameter is taken out and the rest encoded again, once with "+" (which libpq keeps)."""
    url = f"{pg_url}&options=-c%20statement_timeout%3D4321"
    conninfo, _ = postgres_conninfo(url)
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
