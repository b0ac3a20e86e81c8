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
from runq.models import Status  # noqa: E402


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
        # batches of CLEANUP_BATCH (short locks), as many as come back full: all but the locked row
        assert _rows(pg_url) == 1
    _housekeep(pg_app)
    assert _rows(pg_url) == 0


def test_a_renewal_never_reports_held_a_claim_taken_over_while_it_waited(
    pg_app: runq.App, pg_url: str, connection: Any
) -> None:
    """A renewal that waits on the row of a claim being reclaimed (its lease expired) answers from
    what it could write, not from its snapshot: not held. It said held, and a worker thawed from a
    SIGSTOP ran tasks already taken over (bench/soak.py --stop-share 1, docs/reliability.md)."""
    conninfo, schema = postgres_conninfo(pg_url)
    pg_app.enqueue("add", [1, 2])
    pg_app.enqueue("add", [3, 4])
    taken, kept = pg_app.broker.claim(["default"], "w1", 2, 0.1)

    def expired(watch: Any, claim: Any) -> bool:
        sql = f'SELECT lease_until < extract(epoch FROM statement_timestamp()) FROM "{schema}".tasks WHERE id = %s'
        return bool(watch.execute(sql, (claim.id,)).fetchone()[0])

    with psycopg.connect(conninfo, autocommit=True) as watch:
        wait_until(lambda: expired(watch, taken) and expired(watch, kept), 30)
        # Another worker's claim reclaims ``taken`` (runq's own statement, as one transaction, not committed yet).
        connection.execute(
            f"UPDATE \"{schema}\".tasks SET status = 'pending', token = NULL, lease_until = NULL WHERE id = %s",
            (taken.id,),
        )
        answers: list[list[bool]] = []
        renewing = threading.Thread(target=lambda: answers.append(pg_app.broker.renew([taken, kept], 30.0)))
        renewing.start()
        waits = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        wait_until(lambda: watch.execute(waits).fetchone()[0], 30)  # the renewal waits on the reclaim's row lock
        connection.commit()
        renewing.join(30)
    assert answers == [[False, True]]  # the reclaimed one is gone; the expired one nobody took is renewed
    assert pg_app.broker.renew([kept], 30.0) == [True]


def test_a_claim_holding_a_slot_lock_never_waits_for_another(pg_app: runq.App, pg_url: str, connection: Any) -> None:
    """A claim whose first round locked one concurrency slot never waits for a second: a settle
    holding the second and waiting for the first closed a cycle, which PostgreSQL breaks after
    deadlock_timeout (1 s), and a limited drain crawled (bench/soak.py --limited: deadlocks every
    few seconds, 6,000 tasks in ~140 s). The busy slot's task stays pending for a later claim."""
    limit = runq.Limit(1, key="k")
    a1, a2, b1 = (pg_app.enqueue("echo", kwargs={"k": k}, concurrency=limit) for k in ("a", "a", "b"))
    _, schema = postgres_conninfo(pg_url)
    slot_b = connection.execute(f'SELECT queue, slot FROM "{schema}".tasks WHERE id = %s', (b1.id,)).fetchone()
    # Another transaction (a settle freeing a seat of b) holds b's slot lock.
    connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s || chr(31) || %s, 1))", slot_b)
    claims: list[Any] = []
    # Round 1 takes a1 and a2 (slot a locked, a2 held back); round 2 takes b1 and needs slot b.
    claiming = threading.Thread(target=lambda: claims.extend(pg_app.broker.claim(["default"], "w", 2, 30.0)))
    claiming.start()
    claiming.join(10)
    waited = claiming.is_alive()
    connection.rollback()
    claiming.join(30)
    assert not waited, "the claim waited for a second slot lock"
    assert [claim.id for claim in claims] == [a1.id]
    held, given_back = pg_app.info(a2.id), pg_app.info(b1.id)
    assert held is not None and held.status is Status.SCHEDULED  # waits for a's seat
    assert given_back is not None and (given_back.status, given_back.attempts) == (Status.PENDING, 0)
    [again] = pg_app.broker.claim(["default"], "w", 2, 30.0)
    assert again.id == b1.id and again.attempt == 1


def test_libpq_options_in_the_url_reach_the_server(pg_url: str) -> None:
    """A space in a libpq parameter (options=-c%20name%3Dvalue) stays a space: the schema
    parameter is taken out and the rest encoded again, once with "+" (which libpq keeps)."""
    url = f"{pg_url}&options=-c%20statement_timeout%3D4321"
    conninfo, _ = postgres_conninfo(url)
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
