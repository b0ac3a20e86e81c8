"""The PostgreSQL broker: for apps whose data already lives in Postgres.

``postgresql://user[:pass]@host[:port]/db[?schema=runq]`` (also ``postgres://``), via
psycopg 3 and a ``psycopg_pool`` connection pool. Every table lives in one schema
(default ``runq``), created and migrated on first use (``schema.sql``, with a
version table). The methods mirror ``sqlite.py`` one for one; what Postgres adds:

- claims take rows with ``FOR UPDATE SKIP LOCKED``, in batches, from one partial index
  (priority, then ready time, then insertion order), so claimers never wait on each other;
- idle workers and ``result()`` wake on ``LISTEN/NOTIFY`` (``listen.py``), delayed
  tasks and expiring leases by their due time: nothing polls;
- :meth:`PostgresBroker.using` enqueues on the caller's own connection, inside its
  transaction: the task exists if and only if that transaction commits.

Times are the server's clock (``transaction_timestamp()``: flow.NOW), so workers with skewed clocks agree.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import psycopg
from psycopg import Cursor
from psycopg_pool import ConnectionPool, PoolTimeout

from runq.brokers import rules
from runq.brokers.base import BreakerEvent, Broker
from runq.brokers.feed import Feed, Pushed
from runq.brokers.postgres import flow, follow, inspect, limits, produce
from runq.brokers.postgres.flow import NOW, Notes
from runq.brokers.postgres.listen import Listener
from runq.brokers.postgres.setup import connect_and_migrate, postgres_conninfo, unavailable
from runq.brokers.rules import CANCELLED, WORKER_LOST, dependency_error
from runq.errors import BrokerUnavailable
from runq.models import (
    FINAL_STATUSES,
    Claim,
    Message,
    Outcome,
    ProgressReport,
    Stats,
    Status,
    TaskInfo,
    WorkerInfo,
    task_info,
)

T = TypeVar("T")
CLEANUP_INTERVAL = 1.0
CLEANUP_BATCH = 1000
# Batches one housekeeping round may delete while each comes back full, and the time it may take:
# one batch a second could not keep up with more than 1,000 finished tasks a second per process
# (measured: 241,500 expired rows left after 30 s at 9,300 tasks/s), whatever the result_ttl.
CLEANUP_ROUND = (20, 0.25)
NOTIFY_CHUNK = 7000  # bytes of task ids per NOTIFY payload (the limit is 8000)
POOL_SIZE = 10
# The connection a producer lent with PostgresBroker.using(conn), and which broker it is for.
_LENT: ContextVar[tuple[PostgresBroker, psycopg.Connection[Any]] | None] = ContextVar("runq_pg_lent", default=None)


class PostgresBroker(Broker):
    """The Broker on PostgreSQL: thread-safe (a connection pool), connected on first use.

    Like the Redis broker it connects lazily: building it never fails on an unreachable
    server, so a worker started during an outage logs, backs off and resumes like any other
    call; the first call connects once directly (failing fast with the server's own reason,
    masked) and migrates the schema before the pool opens.
    """

    kind = "postgres"

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.conninfo, self.schema = postgres_conninfo(url)
        self.s = f'"{self.schema}"'
        self._connect_timeout = connect_timeout
        self._timeout = max(1, round(connect_timeout))  # libpq's connect_timeout: whole seconds
        self._listener: Listener | None = None
        self._interrupted = False  # see interrupt()
        self._lock = threading.Lock()
        self._opened = False
        self._last_cleanup = 0.0
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "connect_timeout": self._timeout},
            timeout=connect_timeout,
            open=False,
            name=f"runq-{self.schema}",
        )

    def _open(self) -> None:
        """Connect once (the reason of a failure is the server's, at once), migrate, open the pool."""
        with self._lock:
            if self._opened:
                return
            try:
                connect_and_migrate(self.conninfo, self.schema, self._timeout)
            except psycopg.OperationalError as exc:
                raise unavailable(self.url, exc) from None
            self._pool.open(wait=False)
            self._opened = True

    # -- connections --------------------------------------------------------------

    def _run(self, work: Callable[[Cursor[Any]], T], transaction: bool = True) -> T:
        """Run ``work`` on a pooled connection, in one transaction unless told otherwise.

        A connection found broken (a server restart, ``pg_terminate_backend``) is dropped
        and the work runs again on another: every method is safe to repeat (ids are
        unique, claims are fenced). Other operational errors become ``BrokerUnavailable``,
        so the worker backs off and retries instead of dying.
        """
        if not self._opened:
            self._open()
        for attempt in range(3):
            try:
                with self._pool.connection() as conn:
                    try:
                        with conn.cursor() as cur:
                            if not transaction:
                                return work(cur)
                            with conn.transaction():
                                return work(cur)
                    except psycopg.OperationalError as exc:
                        if attempt < 2 and (conn.broken or isinstance(exc, psycopg.errors.TransactionRollback)):
                            continue
                        raise
            except psycopg.DataError as exc:  # e.g. a NUL character, which Postgres text cannot hold
                raise ValueError(f"PostgreSQL cannot store this value: {exc}") from None
            except (psycopg.OperationalError, PoolTimeout) as exc:
                raise unavailable(self.url, exc) from exc
        raise AssertionError("unreachable")

    def _listen(self) -> Listener:
        with self._lock:
            if self._listener is None or self._listener.closed:
                self._listener = Listener(
                    self.conninfo,
                    f"{self.schema}_work",
                    f"{self.schema}_done",
                    self._connect_timeout,
                    f"{self.schema}_events",
                )
            listener = self._listener
        listener.ready(self._connect_timeout)
        return listener

    def _record(self, cur: Cursor[Any], counts: dict[str, int], notes: Notes) -> None:
        """Count and wake in one statement: counter deltas, and the wake-ups of this transaction
        (Postgres delivers them at its commit, never on rollback)."""
        names = [name for name, value in counts.items() if value]
        channels: list[str] = []
        payloads: list[str] = []
        for queue in sorted(notes.work):
            channels.append(f"{self.schema}_work")
            payloads.append(queue)
        chunk: list[str] = []
        size = 0
        for task_id in notes.done:
            chunk.append(task_id)
            size += len(task_id) + 1
            if size > NOTIFY_CHUNK:
                channels.append(f"{self.schema}_done")
                payloads.append(",".join(chunk))
                chunk, size = [], 0
        if chunk:
            channels.append(f"{self.schema}_done")
            payloads.append(",".join(chunk))
        if names or channels:
            cur.execute(
                f"WITH counted AS (INSERT INTO {self.s}.counter_deltas (name, value)"
                " SELECT * FROM unnest(%s::text[], %s::bigint[]))"
                " SELECT pg_notify(c, p) FROM unnest(%s::text[], %s::text[]) AS n(c, p)",
                (names, [counts[name] for name in names], channels, payloads),
            )

    # -- producing ----------------------------------------------------------------

    @contextmanager
    def using(self, connection: psycopg.Connection[Any]) -> Iterator[None]:
        """Enqueue on ``connection``, inside its current transaction, within this block.

        Every ``enqueue`` of this broker in the block (``delay``, ``enqueue_many``, chains,
        groups, chords) runs on the caller's connection in a savepoint: the tasks (and the
        wake-ups of idle workers) exist if and only if the caller's transaction commits.
        The connection must reach the same database; runq never commits or closes it.
        """
        token = _LENT.set((self, connection))
        try:
            yield
        finally:
            _LENT.reset(token)

    def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        lent = _LENT.get()
        if lent is None or lent[0] is not self:
            # Plain messages are one statement (autocommit: its own transaction, one round trip).
            plain = all(m.key is None and not m.after for m in messages)
            return self._run(lambda cur: self._enqueue(cur, messages, key_ttl), transaction=not plain)
        connection = lent[1]
        if not self._opened:  # the schema must exist before the caller's transaction uses it
            self._open()
        if connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            if connection.autocommit:
                raise RuntimeError(
                    "broker.using(connection): the connection is in autocommit mode outside a transaction, "
                    "so the tasks would not wait for any commit (use `with connection.transaction():`)"
                )
            # Nothing run yet on the connection: start the caller's transaction, as its next
            # statement would, so the block below is a savepoint in it, not a commit of its own.
            connection.execute("SELECT 1")
        try:
            with connection.transaction(), connection.cursor() as cur:
                return self._enqueue(cur, messages, key_ttl)
        except psycopg.OperationalError as exc:
            raise unavailable(self.url, exc) from exc

    def _enqueue(self, cur: Cursor[Any], messages: Sequence[Message], key_ttl: float) -> list[str]:
        if all(m.key is None and not m.after for m in messages):
            produce.insert(cur, self.s, messages, key_ttl, f"{self.schema}_work")
            return [m.id for m in messages]
        notes = Notes()
        ids, inserted = [], set()
        for message in messages:
            task_id, new = produce.enqueue_one(cur, self.s, message, key_ttl, notes)
            ids.append(task_id)
            if new:
                inserted.add(task_id)
        limits.release(cur, self.s, notes.freed, notes)
        self._record(cur, {"enqueued": len(inserted), "cancelled": notes.cancelled}, notes)
        return ids

    # -- consuming ----------------------------------------------------------------

    def claim(self, queues: Sequence[str], worker_id: str, limit: int, lease: float) -> list[Claim]:
        claims = self._run(lambda cur: self._claim(cur, list(queues), worker_id, limit, lease))
        now = _monotonic()
        if now - self._last_cleanup > CLEANUP_INTERVAL:
            self._last_cleanup = now
            batches, seconds = CLEANUP_ROUND
            for _ in range(batches):  # each batch its own short transaction
                if self._run(self._housekeep) < CLEANUP_BATCH or _monotonic() - now > seconds:
                    break
        return claims

    def _claim(self, cur: Cursor[Any], queues: list[str], worker_id: str, limit: int, lease: float) -> list[Claim]:
        s = self.s
        row = cur.execute(
            f"WITH lost AS (UPDATE {s}.tasks SET status = 'pending', error = %s, token = NULL, lease_until = NULL,"
            f" ready_at = {NOW} WHERE seq IN (SELECT seq FROM {s}.tasks WHERE status = 'running'"
            f" AND queue = ANY(%s) AND lease_until < {NOW} FOR UPDATE SKIP LOCKED) RETURNING 1),"
            f" due AS (UPDATE {s}.tasks SET status = 'pending' WHERE seq IN (SELECT seq FROM {s}.tasks"
            f" WHERE status = 'scheduled' AND queue = ANY(%s) AND ready_at <= {NOW} FOR UPDATE SKIP LOCKED)"
            " RETURNING 1) SELECT (SELECT count(*) FROM lost), (SELECT count(*) FROM due),"
            f" EXISTS (SELECT 1 FROM {s}.tasks WHERE queue = ANY(%s) AND deadline <= {NOW}"
            " AND deadline IS NOT NULL AND status IN ('pending', 'scheduled'))",
            (WORKER_LOST, queues, queues, queues),
        ).fetchone()
        notes = Notes()
        locked = False  # slot locks held: a later batch may not wait for more (limits.hold_excess)
        if row and row[2]:  # tasks past their deadline (rare: an index probe finds none)
            limits.expire_due(cur, s, queues, notes, notes.freed)
            locked = bool(notes.freed)
            limits.release(cur, s, notes.freed, notes)
        if (row and row[0]) or notes.cancelled:
            self._record(cur, {"retried": row[0] if row else 0, "cancelled": notes.cancelled}, notes)
        claims: list[Claim] = []
        for queue in queues:
            for _ in range(limits.HOLD_ROUNDS):
                want = limit - len(claims)
                rows = limits.pick(cur, s, queue, want, lease, worker_id) if want > 0 else []
                held = limits.hold_excess(cur, s, queue, rows, wait=not locked)
                if held is None:  # a slot busy in another transaction: these stay pending
                    return claims
                locked = locked or any(r[7] is not None for r in rows)
                claims.extend(Claim(r[0], queue, r[1], r[2], r[3]) for r in rows if r[0] not in held)
                if not held or len(rows) < want:
                    break
        return claims

    def _housekeep(self, cur: Cursor[Any]) -> int:
        """Once a second per process, by one process at a time: prune expired results in
        small batches (short locks, skipping rows in use) and fold the counter deltas. Returns
        how many rows it deleted (0 when another process holds the housekeeping lock)."""
        s = self.s
        got = cur.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (f"runq-hk:{self.schema}",))
        if got.fetchone() != (True,):
            return 0
        deleted = cur.execute(
            f"DELETE FROM {s}.tasks WHERE seq IN (SELECT seq FROM {s}.tasks WHERE expires_at < {NOW}"
            " LIMIT %s FOR UPDATE SKIP LOCKED)",
            (CLEANUP_BATCH,),
        ).rowcount
        cur.execute(
            f"WITH d AS (DELETE FROM {s}.counter_deltas RETURNING name, value)"
            f" INSERT INTO {s}.counters (name, value) SELECT name, sum(value) FROM d GROUP BY name"
            f" ON CONFLICT (name) DO UPDATE SET value = {s}.counters.value + excluded.value"
        )
        return deleted

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        if self._interrupted:
            return
        listener = self._listen()
        if self._interrupted:  # interrupt() ran before this listener was there to be interrupted
            return
        names = list(queues)
        mark = listener.work_mark(names)
        s = self.s
        row = self._run(
            lambda cur: cur.execute(
                f"SELECT EXISTS (SELECT 1 FROM {s}.tasks WHERE status = 'pending' AND queue = ANY(%s)"
                f" AND queue NOT IN (SELECT queue FROM {s}.paused)),"
                f" least((SELECT min(ready_at) FROM {s}.tasks WHERE status = 'scheduled' AND queue = ANY(%s)),"
                f" (SELECT min(lease_until) FROM {s}.tasks WHERE status = 'running' AND queue = ANY(%s)),"
                f" (SELECT min(deadline) FROM {s}.tasks WHERE queue = ANY(%s) AND deadline IS NOT NULL"
                f" AND status IN ('pending', 'scheduled'))) - {NOW}",
                (names, names, names, names),
            ).fetchone(),
            transaction=False,
        )
        assert row is not None
        if row[0]:
            return
        if row[1] is not None:
            timeout = min(timeout, max(0.0, row[1]))
        listener.wait_work(names, mark, timeout)

    def interrupt(self) -> None:
        self._interrupted = True
        with self._lock:
            listener = self._listener
        if listener is not None:
            listener.interrupt()

    def renew(self, claims: Sequence[Claim], lease: float) -> list[bool]:
        """Report which claims are still held; write only the leases past half their time.

        A lease past half its time is held only if this statement renewed it: its snapshot would
        still show it running while a claim reclaims it (the update waits on that claim's row lock,
        then finds the token gone), and the worker would run a task taken over."""
        if not claims:
            return []
        s = self.s
        ids, tokens = [c.id for c in claims], [c.token for c in claims]
        rows = self._run(
            lambda cur: cur.execute(
                "WITH c AS (SELECT * FROM unnest(%s::text[], %s::text[]) AS c(id, token)),"
                f" held AS (SELECT t.id FROM {s}.tasks t JOIN c ON t.id = c.id AND t.token = c.token"
                f" WHERE t.status = 'running' AND t.lease_until - {NOW} >= %s / 2),"
                f" renewed AS (UPDATE {s}.tasks t SET lease_until = {NOW} + %s FROM c WHERE t.id = c.id"
                f" AND t.token = c.token AND t.status = 'running' AND t.lease_until - {NOW} < %s / 2 RETURNING t.id)"
                " SELECT id FROM held UNION SELECT id FROM renewed",
                (ids, tokens, lease, lease, lease),
            ).fetchall(),
            transaction=False,
        )
        held = {row[0] for row in rows}
        return [claim.id in held for claim in claims]

    def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        return self._run(lambda cur: self._settle(cur, outcomes))

    def _settle(self, cur: Cursor[Any], outcomes: Sequence[Outcome]) -> list[bool]:
        s = self.s
        o = outcomes
        rows = cur.execute(
            f"UPDATE {s}.tasks t SET"
            " status = CASE WHEN o.kind IN ('succeeded', 'failed') THEN o.kind"
            " WHEN o.delay > 0 THEN 'scheduled' ELSE 'pending' END,"
            " result = CASE WHEN o.kind = 'succeeded' THEN o.result ELSE t.result END,"
            " error = CASE o.kind WHEN 'succeeded' THEN NULL WHEN 'release' THEN t.error ELSE o.error END,"
            f" finished_at = CASE WHEN o.kind IN ('succeeded', 'failed') THEN {NOW} ELSE t.finished_at END,"
            f" expires_at = CASE o.kind WHEN 'succeeded' THEN {NOW} + o.ttl WHEN 'failed' THEN NULL"
            " ELSE t.expires_at END,"
            f" started_at = CASE WHEN o.kind IN ('succeeded', 'failed') THEN coalesce({NOW} - o.runtime, t.started_at)"
            " WHEN o.kind = 'release' THEN NULL ELSE t.started_at END,"
            f" ready_at = CASE WHEN o.kind = 'retry' THEN {NOW} + greatest(0, o.delay)"
            f" WHEN o.kind = 'release' AND o.delay > 0 THEN {NOW} + o.delay ELSE t.ready_at END,"
            " attempts = t.attempts - CASE WHEN o.kind = 'release' AND o.uncount THEN 1 ELSE 0 END,"
            " lease_until = NULL"  # the token stays (it fences nothing once not running): see flow.repeats
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::float8[],"
            " %s::float8[], %s::bool[]) AS o(id, token, kind, result, error, delay, ttl, runtime, uncount)"
            " WHERE t.id = o.id AND t.token = o.token AND t.status = 'running'"
            " RETURNING t.id, t.queue, o.kind, t.status, t.slot, t.concurrency",
            (
                [x.id for x in o],
                [x.token for x in o],
                [x.kind for x in o],
                [x.result for x in o],
                [json.dumps(x.error) if x.error is not None else None for x in o],
                [float(x.delay) for x in o],
                [float(x.result_ttl) for x in o],
                [None if x.runtime is None else float(x.runtime) for x in o],
                [x.uncount for x in o],
            ),
        ).fetchall()
        notes = Notes()
        counts: Counter[str] = Counter()
        ended: list[tuple[str, str]] = []
        for task_id, queue, kind, status, slot, limit in rows:
            counts[{"retry": "retried"}.get(kind, kind)] += kind != "release"
            if slot is not None and status != "pending":  # it gave its seat up
                notes.freed[(queue, slot)] = limit or 1
            if kind in ("succeeded", "failed"):
                ended.append((task_id, kind))
            else:
                notes.work.add(queue)
        if ended:
            flow.lock_parents(cur, [task_id for task_id, _ in ended])
            notes.done.extend(task_id for task_id, _ in ended)
            errors = [(i, None if kind == "succeeded" else dependency_error(i, "failed")) for i, kind in ended]
            flow.release_ended(cur, s, errors, notes)
        limits.release(cur, s, notes.freed, notes)
        counts["cancelled"] += notes.cancelled
        self._record(cur, dict(counts), notes)
        applied = {row[0] for row in rows}
        repeated = flow.repeats(cur, s, [(x.id, x.token) for x in o if x.id not in applied])
        self._drive_breakers(cur, o)  # a late run counts too, each run once (rules.first_report)
        return [x.id in applied or x.id in repeated for x in o]

    def _drive_breakers(self, cur: Cursor[Any], outcomes: Sequence[Outcome]) -> None:
        """Tell each outcome's breaker how its run went, by name in one order (row locks)."""
        events = [(x.breaker, event, x.token) for x in outcomes if (event := rules.breaker_event(x)) is not None]
        for rule, event, token in sorted(events, key=lambda item: item[0].name if item[0] else ""):
            if rule is not None:
                flow.breaker(cur, self.s, rule.name, event, rule.failures, rule.seconds, token)

    # -- progress and events (follow.py) --------------------------------------------

    def progress(self, reports: Sequence[ProgressReport]) -> builtins.list[bool]:
        if not reports:
            return []
        return self._run(lambda cur: follow.report(cur, self.s, reports), transaction=False)

    def follow(self, task_id: str) -> Feed:
        """Listening first, then marking and reading the task: no change after the read is missed."""
        listener = self._listen()

        def read(watch: bool) -> tuple[TaskInfo | None, int]:
            return self._run(lambda cur: follow.read(cur, self.s, task_id, watch), transaction=False)

        feed = Pushed(task_id, lambda: read(False), listener.unfollow)
        listener.follow(feed)
        try:
            feed.opened(*read(True))
        except BaseException:
            listener.unfollow(feed)
            raise
        return feed

    # -- inspecting and steering --------------------------------------------------

    def get(self, task_id: str) -> TaskInfo | None:
        row = self._run(
            lambda cur: cur.execute(
                f"SELECT {inspect.TASK_COLUMNS} FROM {self.s}.tasks WHERE id = %s"
                f" AND (expires_at IS NULL OR expires_at > {NOW})",
                (task_id,),
            ).fetchone(),
            transaction=False,
        )
        return task_info(dict(zip(inspect.FIELDS, row, strict=False))) if row else None

    def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        deadline = _monotonic() + timeout
        listener = self._listen()
        with listener.watch(task_id) as watch:
            while True:
                info = self.get(task_id)
                remaining = deadline - _monotonic()
                if info is None or info.status in FINAL_STATUSES or remaining <= 0:
                    return info
                watch.wait(remaining)

    def cancel(self, task_id: str) -> bool:
        return self._run(lambda cur: self._cancel(cur, task_id))

    def _cancel(self, cur: Cursor[Any], task_id: str) -> bool:
        s = self.s
        row = cur.execute(
            f"UPDATE {s}.tasks SET status = 'cancelled', error = %s, token = NULL, lease_until = NULL,"
            f" finished_at = {NOW}, expires_at = {NOW} + result_ttl"
            " WHERE id = %s AND status IN ('pending', 'scheduled', 'waiting', 'running')"
            " RETURNING id, queue, slot, concurrency",
            (CANCELLED, task_id),
        ).fetchone()
        if row is None:
            return False
        notes = Notes(done=[task_id])
        cur.execute(f"DELETE FROM {s}.deps WHERE child = %s", (task_id,))
        flow.lock_parents(cur, [task_id])
        flow.release_children(cur, s, task_id, dependency_error(task_id, "was cancelled"), notes)
        if row[2] is not None:
            limits.release(cur, s, {(row[1], row[2]): row[3] or 1}, notes)
        self._record(cur, {"cancelled": 1 + notes.cancelled}, notes)
        return True

    def retry(self, task_id: str) -> bool:
        def work(cur: Cursor[Any]) -> bool:
            row = cur.execute(
                f"UPDATE {self.s}.tasks SET status = 'pending', attempts = 0, ready_at = {NOW}, token = NULL,"
                " result = NULL, error = NULL, started_at = NULL, finished_at = NULL, expires_at = NULL,"
                f" deadline = NULL WHERE id = %s AND status IN ('failed', 'cancelled')"
                f" AND (expires_at IS NULL OR expires_at > {NOW}) RETURNING queue",
                (task_id,),
            ).fetchone()
            if row is not None:
                self._record(cur, {}, Notes(work={row[0]}))
            return row is not None

        return self._run(work)

    def list(self, status: Status | None, queue: str | None, limit: int) -> list[TaskInfo]:
        where, params = inspect.where_clause(status, queue, expired=False)
        rows = self._run(
            lambda cur: cur.execute(
                f"SELECT {inspect.TASK_COLUMNS} FROM {self.s}.tasks {where} ORDER BY seq DESC LIMIT %s",
                (*params, limit),
            ).fetchall(),
            transaction=False,
        )
        return [task_info(dict(zip(inspect.FIELDS, row, strict=False))) for row in rows]

    def purge(self, status: Status | None, queue: str | None) -> int:
        if status is Status.RUNNING:
            raise ValueError("running tasks cannot be purged: cancel them first")
        # A task past its result_ttl is gone already: left to the clean-up, not counted.
        if status is None:
            where = f"WHERE status = ANY(%s) AND (expires_at IS NULL OR expires_at > {NOW})"
            where += " AND queue = %s" if queue else ""
            params: tuple[Any, ...] = ([s.value for s in FINAL_STATUSES], *((queue,) if queue else ()))
        else:
            where, params = inspect.where_clause(status, queue, expired=False)
        return self._run(lambda cur: cur.execute(f"DELETE FROM {self.s}.tasks {where}", params).rowcount)

    def stats(self) -> Stats:
        return self._run(lambda cur: inspect.stats(cur, self.s), transaction=False)

    def ping(self) -> None:
        self._run(lambda cur: cur.execute("SELECT 1"), transaction=False)

    def storage_bytes(self) -> int | None:
        row = self._run(
            lambda cur: cur.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                (self.schema,),
            ).fetchone(),
            transaction=False,
        )
        return None if row is None or row[0] is None else int(row[0])

    # -- flow control -------------------------------------------------------------

    def take_tick(self, name: str, tick: str, ttl: float) -> bool:
        return self._run(lambda cur: flow.take_tick(cur, self.s, name, tick, ttl))

    def acquire_rate(self, name: str, rate: float, per: float) -> float:
        return self._run(lambda cur: flow.acquire_rate(cur, self.s, name, rate, per))

    def breaker(self, name: str, event: BreakerEvent, failures: int, seconds: float) -> float:
        return self._run(lambda cur: flow.breaker(cur, self.s, name, event, failures, seconds))

    def pause(self, queue: str, paused: bool) -> bool:
        def work(cur: Cursor[Any]) -> bool:
            changed = limits.pause(cur, self.s, queue, paused)
            if changed and not paused:
                self._record(cur, {}, Notes(work={queue}))  # wake idle workers
            return changed

        return self._run(work)

    def paused(self) -> set[str]:
        return self._run(lambda cur: limits.paused(cur, self.s), transaction=False)

    # -- workers ------------------------------------------------------------------

    def add_task_metrics(self, deltas: Mapping[str, Mapping[str, float]]) -> None:
        sql = (
            f"INSERT INTO {self.s}.task_metrics (queue, field, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (queue, field) DO UPDATE SET value = task_metrics.value + excluded.value"
        )
        found = rules.metric_rows(deltas)
        self._run(lambda cur: cur.executemany(sql, found))

    def task_metrics(self) -> dict[str, dict[str, float]]:
        found = self._run(
            lambda cur: cur.execute(f"SELECT queue, field, value FROM {self.s}.task_metrics").fetchall(),
            transaction=False,
        )
        return rules.metric_totals([tuple(row) for row in found])

    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        def work(cur: Cursor[Any]) -> None:
            cur.execute(
                f"INSERT INTO {self.s}.workers (id, info, expires_at) VALUES (%s, %s, {NOW} + %s)"
                " ON CONFLICT (id) DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at",
                (worker.id, worker.encode(), ttl),
            )
            cur.execute(f"DELETE FROM {self.s}.workers WHERE expires_at < {NOW}")

        self._run(work)

    def unregister(self, worker_id: str) -> None:
        self._run(lambda cur: cur.execute(f"DELETE FROM {self.s}.workers WHERE id = %s", (worker_id,)))

    def workers(self) -> builtins.list[WorkerInfo]:
        rows = self._run(
            lambda cur: cur.execute(
                f"SELECT info FROM {self.s}.workers WHERE expires_at >= {NOW} ORDER BY id"
            ).fetchall(),
            transaction=False,
        )
        return [WorkerInfo.decode(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if listener is not None and self._opened:
            with contextlib.suppress(BrokerUnavailable):  # wake its thread now, not at its next timeout
                self._run(lambda cur: cur.execute("SELECT pg_notify(%s, '')", (listener.work_channel,)), False)
        self._pool.close()


def _monotonic() -> float:
    return time.monotonic()
