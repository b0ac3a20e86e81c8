"""The embedded default broker: one SQLite file, safe for many processes on one machine.

Every state change is one ``BEGIN IMMEDIATE`` transaction (a single writer at a
time, so claims never race) in WAL mode, so readers never block writers. Each
thread gets its own connection. Idle waiting polls ``PRAGMA data_version``, which
changes only when another connection commits: a cheap check against shared
memory, not a query, so idle workers cost next to nothing yet notice new work
within 0.5 ms of a wait's start, 25 ms at most (follow.py: ``until_changed``).
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from runq.brokers import rules
from runq.brokers.base import BreakerEvent, Broker
from runq.brokers.feed import Feed
from runq.brokers.rules import CANCELLED, WORKER_LOST, dependency_error
from runq.brokers.sqlite import flow, follow, inspect
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

RESULT_POLL = 0.005  # a result wait's longest interval: a waiter is there for that task's end
CLEANUP_INTERVAL = 1.0
CLEANUP_BATCH = 1000
_TASK_COLUMNS = (
    "id, queue, name, status, payload, attempts, result, error, worker, enqueued_at, started_at, finished_at, ready_at,"
    " progress"
)


def sqlite_path(url: str) -> tuple[str, dict[str, list[str]]]:
    """``sqlite:///rel.db`` is relative to the cwd, ``sqlite:////abs.db`` absolute (as SQLAlchemy)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc:
        raise ValueError(f"not a SQLite URL (expected sqlite:///file.db): {url!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ValueError(f"SQLite URL has no file path: {url!r}")
    return path, parse_qs(parts.query)


class SQLiteBroker(Broker):
    kind = "sqlite"

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        path, query = sqlite_path(url)
        self.path = str(Path(path).expanduser())
        self._synchronous = query.get("synchronous", ["NORMAL"])[0].upper()
        if self._synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be off, normal, full or extra: {url!r}")
        self._busy_timeout = max(connect_timeout, 30.0)
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._interrupted = threading.Event()  # see interrupt()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._last_cleanup = 0.0
        # The broker's one clock: every time it stores or compares. Tests move it (tests/support/clock.py).
        self.clock: Callable[[], float] = time.time
        schema = resources.files("runq.brokers.sqlite").joinpath("schema.sql").read_text()
        try:
            self._connection().executescript(schema)
            follow.ensure(self._connection())
            flow.migrate(self._connection())
        except sqlite3.Error as exc:
            raise BrokerUnavailable(f"cannot set up SQLite database {self.path!r}: {exc}") from exc

    # -- connections --------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(
                    self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
                )
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self._synchronous}")
            except sqlite3.Error as exc:
                raise BrokerUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.

        Operational errors (locked past the busy timeout, disk full, I/O) become
        ``BrokerUnavailable`` so the worker backs off and retries instead of dying.
        """
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise BrokerUnavailable(f"SQLite database {self.path!r} is unavailable: {exc}") from exc

    def _read(self) -> sqlite3.Connection:
        return self._connection()

    def _data_version(self) -> int:
        return follow.data_version(self._read())

    # -- producing ----------------------------------------------------------------

    def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        ids: list[str] = []
        inserted = 0
        freed: flow.Freed = {}
        with self._write() as db:
            now = self.clock()
            for message in messages:
                if message.key is not None:
                    existing = self._held_key(db, message.queue, message.key, now)
                    if existing is not None and message.debounce is not None:
                        if flow.debounce(db, existing, message, key_ttl, now, freed):
                            ids.append(existing)
                            continue
                        db.execute("UPDATE runq_tasks SET key = NULL WHERE id = ?", (existing,))  # it started
                    elif existing is not None:
                        ids.append(existing)
                        continue
                delayed = message.delay > 0
                status = Status.SCHEDULED if delayed else Status.PENDING
                if message.after:
                    status = Status.WAITING
                db.execute(
                    "INSERT INTO runq_tasks (id, queue, name, status, priority, ready_at, payload,"
                    " key, key_expires_at, result_ttl, enqueued_at, deadline, slot, concurrency)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        message.id,
                        message.queue,
                        message.name,
                        status.value,
                        message.priority,
                        now + message.delay if delayed else now,
                        message.payload,
                        message.key,
                        now + key_ttl if message.key is not None else None,
                        message.result_ttl,
                        now,
                        None if message.expires is None else now + message.expires,
                        message.slot,
                        message.concurrency,
                    ),
                )
                ids.append(message.id)
                inserted += 1
                if message.after:
                    self._wait_for_parents(db, message, now)
            self._count(db, "enqueued", inserted)
            if freed:
                flow.release(db, freed, now)
        return ids

    @staticmethod
    def _wait_for_parents(db: sqlite3.Connection, message: Message, now: float) -> None:
        """A task with ``after`` starts waiting; parents already final release or cancel it now."""
        error = flow.link(db, message, now)
        if error is not None:
            db.execute("DELETE FROM runq_deps WHERE child = ?", (message.id,))
            SQLiteBroker._count(db, "cancelled", flow.cancel_waiting(db, message.id, error, now))
        elif db.execute("SELECT 1 FROM runq_deps WHERE child = ? LIMIT 1", (message.id,)).fetchone() is None:
            db.execute(
                "UPDATE runq_tasks SET status = CASE WHEN ready_at > ? THEN 'scheduled' ELSE 'pending' END"
                " WHERE id = ?",
                (now, message.id),
            )

    @staticmethod
    def _held_key(db: sqlite3.Connection, queue: str, key: str, now: float) -> str | None:
        """The id holding ``key`` in ``queue``; an expired hold is released for the new task."""
        row = db.execute(
            "SELECT id, key_expires_at, expires_at FROM runq_tasks WHERE queue = ? AND key = ?", (queue, key)
        ).fetchone()
        if row is None:
            return None
        if row["key_expires_at"] > now and (row["expires_at"] is None or row["expires_at"] > now):
            return str(row["id"])
        db.execute("UPDATE runq_tasks SET key = NULL WHERE id = ?", (row["id"],))
        return None

    # -- consuming ----------------------------------------------------------------

    def claim(self, queues: Sequence[str], worker_id: str, limit: int, lease: float) -> list[Claim]:
        claims: list[Claim] = []
        marks = ",".join("?" * len(queues))
        # Read before looking: a task enqueued after the look (and before this thread's next
        # wait_for_work) then moves the version from this one, and ends that wait.
        self._local.seen = self._data_version()
        if not self._claimable(marks, queues, self.clock()):
            return claims
        with self._write() as db:
            now = self.clock()
            freed: flow.Freed = {}
            self._reclaim_expired(db, marks, queues, now)
            self._count(db, "cancelled", flow.expire_due(db, marks, tuple(queues), now, freed))
            db.execute(
                f"UPDATE runq_tasks SET status = 'pending' WHERE status = 'scheduled'"
                f" AND queue IN ({marks}) AND ready_at <= ?",
                (*queues, now),
            )
            flow.release(db, freed, now)
            paused = flow.paused(db)
            for queue in queues:
                while len(claims) < limit and queue not in paused:
                    if not self._take(db, queue, worker_id, limit - len(claims), lease, now, claims, freed):
                        break
            flow.release(db, freed, now)
            if now - self._last_cleanup > CLEANUP_INTERVAL:
                self._last_cleanup = now
                self._delete_expired(db, now)
        return claims

    def _take(
        self,
        db: sqlite3.Connection,
        queue: str,
        worker_id: str,
        want: int,
        lease: float,
        now: float,
        claims: list[Claim],
        freed: flow.Freed,
    ) -> bool:
        """Claim up to ``want`` of the next pending tasks of ``queue`` into ``claims``; those past
        their deadline expire and those whose slot is full are held instead. ``False`` once the
        queue has no pending task left."""
        rows = db.execute(
            "SELECT seq, id, queue, status, payload, attempts, deadline, slot, concurrency FROM runq_tasks"
            " WHERE status = 'pending' AND queue = ? ORDER BY priority DESC, ready_at, seq LIMIT ?",
            (queue, want),
        ).fetchall()
        taken: list[tuple[sqlite3.Row, str]] = []
        tally: dict[str, int] = {}  # runs of each slot claimed in this batch (not written yet)
        for row in rows:
            slot = row["slot"]
            if row["deadline"] is not None and row["deadline"] <= now:
                self._count(db, "cancelled", flow.expire(db, [row], now, freed))
            elif slot is not None and flow.running(db, queue, slot) + tally.get(slot, 0) >= (row["concurrency"] or 1):
                flow.hold(db, row["seq"])
            else:
                if slot is not None:
                    tally[slot] = tally.get(slot, 0) + 1
                taken.append((row, os.urandom(16).hex()))  # a fencing token (uuid4().hex cost ~4x)
        db.executemany(
            "UPDATE runq_tasks SET status = 'running', attempts = attempts + 1, token = ?,"
            " lease_until = ?, worker = ?, started_at = ? WHERE seq = ?",
            [(token, now + lease, worker_id, now, row["seq"]) for row, token in taken],
        )
        claims.extend(Claim(row["id"], queue, row["payload"], row["attempts"] + 1, token) for row, token in taken)
        return len(rows) == want

    def _claimable(self, marks: str, queues: Sequence[str], now: float) -> bool:
        """Whether a claim would change anything: a plain read (WAL readers never block),
        so an idle worker takes no write lock. Every write transaction is one a paused
        worker (SIGSTOP, a debugger) could freeze while holding the database's only
        write lock, stalling every other process until it resumes."""
        cleanup = now - self._last_cleanup > CLEANUP_INTERVAL
        row = (
            self._read()
            .execute(
                f"SELECT EXISTS (SELECT 1 FROM runq_tasks WHERE status = 'pending' AND queue IN ({marks})"
                f" AND queue NOT IN (SELECT queue FROM runq_paused))"
                f" OR EXISTS (SELECT 1 FROM runq_tasks WHERE status = 'scheduled' AND queue IN ({marks})"
                f" AND ready_at <= ?)"
                f" OR EXISTS (SELECT 1 FROM runq_tasks WHERE status = 'running' AND queue IN ({marks})"
                f" AND lease_until < ?)"
                f" OR EXISTS (SELECT 1 FROM runq_tasks WHERE queue IN ({marks}) AND deadline <= ?"
                f" AND deadline IS NOT NULL AND status IN ('pending', 'scheduled'))"
                f" OR (? AND EXISTS (SELECT 1 FROM runq_tasks WHERE expires_at < ?))",
                (*queues, *queues, now, *queues, now, *queues, now, int(cleanup), now),
            )
            .fetchone()
        )
        return bool(row[0])

    def _reclaim_expired(self, db: sqlite3.Connection, marks: str, queues: Sequence[str], now: float) -> None:
        """Leases that ran out go back to pending; the lost run stays counted as an attempt,
        so the worker can fail a task that keeps killing its workers (a poison pill)."""
        cursor = db.execute(
            f"UPDATE runq_tasks SET status = 'pending', error = ?, token = NULL, lease_until = NULL,"
            f" ready_at = ? WHERE status = 'running' AND queue IN ({marks}) AND lease_until < ?",
            (WORKER_LOST, now, *queues, now),
        )
        self._count(db, "retried", cursor.rowcount)

    @staticmethod
    def _delete_expired(db: sqlite3.Connection, now: float) -> None:
        db.execute(
            "DELETE FROM runq_tasks WHERE seq IN (SELECT seq FROM runq_tasks WHERE expires_at < ? LIMIT ?)",
            (now, CLEANUP_BATCH),
        )

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Until a commit by another connection since this thread's last claim looked (or, with
        no claim before, since now), a due time, or ``timeout``."""
        if self._interrupted.is_set():
            return
        deadline = time.monotonic() + timeout
        seen: int | None = self._local.__dict__.pop("seen", None)  # once: a second wait must not spin
        marks = ",".join("?" * len(queues))
        db = self._read()
        row = db.execute(
            f"SELECT min(t) FROM (SELECT min(ready_at) AS t FROM runq_tasks WHERE status = 'scheduled'"
            f" AND queue IN ({marks}) UNION ALL SELECT min(lease_until) FROM runq_tasks"
            f" WHERE status = 'running' AND queue IN ({marks}) UNION ALL SELECT min(deadline) FROM runq_tasks"
            f" WHERE queue IN ({marks}) AND deadline IS NOT NULL AND status IN ('pending', 'scheduled'))",
            (*queues, *queues, *queues),
        ).fetchone()
        if row[0] is not None:
            deadline = min(deadline, time.monotonic() + max(0.0, row[0] - self.clock()))
        # Paced as ever (the first look after FIRST_POLL), so a worker whose queues are dry while
        # other connections commit all the time claims at most every millisecond.
        seen = self._data_version() if seen is None else seen
        follow.until_changed(self._data_version, seen, deadline, stop=self._interrupted)

    def interrupt(self) -> None:
        self._interrupted.set()

    def renew(self, claims: Sequence[Claim], lease: float) -> list[bool]:
        """Read which claims are still held (that is how a worker learns of a cancel), and
        write only the leases past half their time, so a busy worker's keeper rarely takes
        the write lock (see :meth:`_claimable`)."""
        now = self.clock()
        current: dict[str, tuple[str, float]] = {}
        ids = [claim.id for claim in claims]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self._read().execute(
                f"SELECT id, token, lease_until FROM runq_tasks WHERE status = 'running'"
                f" AND id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            current.update((row["id"], (row["token"], row["lease_until"])) for row in rows)
        held = [current.get(claim.id, ("", 0.0))[0] == claim.token for claim in claims]
        due = [i for i, claim in enumerate(claims) if held[i] and rules.renews(current[claim.id][1], now, lease)]
        if due:
            with self._write() as db:
                now = self.clock()
                for i in due:
                    cursor = db.execute(
                        "UPDATE runq_tasks SET lease_until = ? WHERE id = ? AND token = ? AND status = 'running'",
                        (now + lease, claims[i].id, claims[i].token),
                    )
                    held[i] = cursor.rowcount == 1
        return held

    def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        accepted: list[bool] = []
        counts: Counter[str] = Counter()  # written once per batch, not once per outcome
        with self._write() as db:
            now = self.clock()
            freed: flow.Freed = {}
            flow.seats_of(db, [outcome.id for outcome in outcomes], freed)  # one read per batch
            # Only these can have children to release (no settle adds a dependency): one read per batch.
            parents = flow.parents_among(db, [o.id for o in outcomes if o.kind in ("succeeded", "failed")])
            for outcome in outcomes:
                sql, params, counter = self._settle_statement(outcome, now)
                # The token stays (no longer 'running', it fences nothing): a repeat of this outcome is recognised.
                cursor = db.execute(
                    f"UPDATE runq_tasks SET {sql}, lease_until = NULL"
                    " WHERE id = ? AND token = ? AND status = 'running'",
                    (*params, outcome.id, outcome.token),
                )
                ok = cursor.rowcount == 1
                repeat = not ok and self._repeat(db, outcome, now)
                accepted.append(ok or repeat)
                event = rules.breaker_event(outcome)
                if event is not None and outcome.breaker is not None:  # a late run counts too, once
                    rule = outcome.breaker
                    flow.breaker(db, rule.name, event, rule.failures, rule.seconds, now, outcome.token)
                if ok and counter:
                    counts[counter] += 1
                if ok and outcome.id in parents:
                    error = None if outcome.kind == "succeeded" else dependency_error(outcome.id, "failed")
                    counts["cancelled"] += flow.release_children(db, outcome.id, error, now)
            if freed:
                flow.release(db, freed, now)
            for name, amount in sorted(counts.items()):
                self._count(db, name, amount)
        return accepted

    @staticmethod
    def _repeat(db: sqlite3.Connection, outcome: Outcome, now: float) -> bool:
        """Whether ``outcome`` was applied already: its claim's token is the one that settled the
        task, and the task is not past its result_ttl (then it is gone, deleted or not yet)."""
        found = db.execute(
            "SELECT 1 FROM runq_tasks WHERE id = ? AND token = ? AND status != 'running'"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (outcome.id, outcome.token, now),
        ).fetchone()
        return found is not None

    @staticmethod
    def _settle_statement(outcome: Outcome, now: float) -> tuple[str, tuple[Any, ...], str | None]:
        error = json.dumps(outcome.error) if outcome.error is not None else None
        started = None if outcome.runtime is None else now - outcome.runtime
        if outcome.kind == "succeeded":
            return (
                "status = 'succeeded', result = ?, error = NULL, finished_at = ?, expires_at = ?,"
                " started_at = COALESCE(?, started_at)",
                (outcome.result, now, now + outcome.result_ttl, started),
                "succeeded",
            )
        if outcome.kind == "retry":
            status = Status.SCHEDULED if outcome.delay > 0 else Status.PENDING
            return (
                "status = ?, error = ?, ready_at = ?",
                (status.value, error, now + max(0.0, outcome.delay)),
                "retried",
            )
        if outcome.kind == "failed":
            return (
                "status = 'failed', error = ?, finished_at = ?, expires_at = NULL,"
                " started_at = COALESCE(?, started_at)",
                (error, now, started),
                "failed",
            )
        if outcome.delay > 0:  # held back by a rate limit or a circuit breaker
            return (
                "status = 'scheduled', ready_at = ?, started_at = NULL, attempts = attempts - ?",
                (now + outcome.delay, 1 if outcome.uncount else 0),
                None,
            )
        return (
            "status = 'pending', started_at = NULL, attempts = attempts - ?",
            (1 if outcome.uncount else 0,),
            None,
        )

    # -- progress and events (follow.py) --------------------------------------------

    def progress(self, reports: Sequence[ProgressReport]) -> builtins.list[bool]:
        if not reports:
            return []
        with self._write() as db:
            return follow.report(db, reports, self.clock())

    def follow(self, task_id: str) -> Feed:
        """A feed that polls the task (follow.py): nothing is written for a follower."""
        return follow.SQLiteFeed(task_id, self.get(task_id), self._read, self.clock)

    # -- inspecting and steering --------------------------------------------------

    def get(self, task_id: str) -> TaskInfo | None:
        row = (
            self._read()
            .execute(
                f"SELECT {_TASK_COLUMNS} FROM runq_tasks WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
                (task_id, self.clock()),
            )
            .fetchone()
        )
        return task_info(dict(row)) if row else None

    def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        deadline = time.monotonic() + timeout
        while True:
            version = self._data_version()
            info = self.get(task_id)
            if info is None or info.status in FINAL_STATUSES:
                return info
            if not follow.until_changed(self._data_version, version, deadline, longest=RESULT_POLL):
                return info

    def cancel(self, task_id: str) -> bool:
        with self._write() as db:
            now = self.clock()
            freed: flow.Freed = {}
            flow.seats_of(db, [task_id], freed)
            cursor = db.execute(
                "UPDATE runq_tasks SET status = 'cancelled', error = ?, token = NULL, lease_until = NULL,"
                " finished_at = ?, expires_at = ? + result_ttl"
                " WHERE id = ? AND status IN ('pending', 'scheduled', 'waiting', 'running')",
                (CANCELLED, now, now, task_id),
            )
            done = cursor.rowcount == 1
            if done:
                db.execute("DELETE FROM runq_deps WHERE child = ?", (task_id,))
                error = dependency_error(task_id, "was cancelled")
                self._count(db, "cancelled", 1 + flow.release_children(db, task_id, error, now))
                flow.release(db, freed, now)
        return done

    def retry(self, task_id: str) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE runq_tasks SET status = 'pending', attempts = 0, ready_at = ?1, token = NULL,"
                " result = NULL, error = NULL, started_at = NULL, finished_at = NULL, expires_at = NULL,"
                " deadline = NULL WHERE id = ?2 AND status IN ('failed', 'cancelled')"
                " AND (expires_at IS NULL OR expires_at > ?1)",
                (self.clock(), task_id),
            )
            return cursor.rowcount == 1

    def list(self, status: Status | None, queue: str | None, limit: int) -> list[TaskInfo]:
        where, params = inspect.where_clause(status, queue, self.clock())
        rows = (
            self._read()
            .execute(f"SELECT {_TASK_COLUMNS} FROM runq_tasks {where} ORDER BY seq DESC LIMIT ?", (*params, limit))
            .fetchall()
        )
        return [task_info(dict(row)) for row in rows]

    def purge(self, status: Status | None, queue: str | None) -> int:
        if status is Status.RUNNING:
            raise ValueError("running tasks cannot be purged: cancel them first")
        with self._write() as db:  # one past its result_ttl is gone already: left to the clean-up
            now = self.clock()
            if status is None:
                marks = ",".join("?" * len(FINAL_STATUSES))
                where = f"WHERE status IN ({marks}) AND (expires_at IS NULL OR expires_at > ?)"
                where += " AND queue = ?" if queue else ""
                params: tuple[Any, ...] = (*(s.value for s in FINAL_STATUSES), now, *((queue,) if queue else ()))
            else:
                where, params = inspect.where_clause(status, queue, now)
            return db.execute(f"DELETE FROM runq_tasks {where}", params).rowcount

    def stats(self) -> Stats:
        return inspect.stats(self._read(), self.clock())

    def storage_bytes(self) -> int | None:
        try:
            return sum(os.path.getsize(path) for path in (self.path, f"{self.path}-wal") if os.path.exists(path))
        except OSError:
            return None

    @staticmethod
    def _count(db: sqlite3.Connection, name: str, amount: int) -> None:
        if amount:
            db.execute(
                "INSERT INTO runq_counters (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (name, amount),
            )

    # -- flow control -------------------------------------------------------------

    def take_tick(self, name: str, tick: str, ttl: float) -> bool:
        with self._write() as db:
            return flow.take_tick(db, name, tick, ttl, self.clock())

    def acquire_rate(self, name: str, rate: float, per: float) -> float:
        with self._write() as db:
            return flow.acquire_rate(db, name, rate, per, self.clock())

    def breaker(self, name: str, event: BreakerEvent, failures: int, seconds: float) -> float:
        with self._write() as db:
            return flow.breaker(db, name, event, failures, seconds, self.clock())

    def pause(self, queue: str, paused: bool) -> bool:
        with self._write() as db:
            return flow.pause(db, queue, paused)

    def paused(self) -> set[str]:
        return flow.paused(self._read())

    # -- workers ------------------------------------------------------------------

    def add_task_metrics(self, deltas: Mapping[str, Mapping[str, float]]) -> None:
        with self._write() as db:
            db.executemany(
                "INSERT INTO runq_task_metrics (queue, field, value) VALUES (?, ?, ?)"
                " ON CONFLICT (queue, field) DO UPDATE SET value = value + excluded.value",
                rules.metric_rows(deltas),
            )

    def task_metrics(self) -> dict[str, dict[str, float]]:
        found = self._read().execute("SELECT queue, field, value FROM runq_task_metrics").fetchall()
        return rules.metric_totals([tuple(row) for row in found])

    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        with self._write() as db:
            now = self.clock()
            db.execute(
                "INSERT INTO runq_workers (id, info, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at",
                (worker.id, worker.encode(), now + ttl),
            )
            db.execute("DELETE FROM runq_workers WHERE expires_at < ?", (now,))

    def unregister(self, worker_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM runq_workers WHERE id = ?", (worker_id,))

    def workers(self) -> builtins.list[WorkerInfo]:
        rows = (
            self._read()
            .execute("SELECT info FROM runq_workers WHERE expires_at >= ? ORDER BY id", (self.clock(),))
            .fetchall()
        )
        return [WorkerInfo.decode(row["info"]) for row in rows]

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()
