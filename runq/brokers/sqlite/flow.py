"""Flow control for the SQLite broker: dependencies (``after``), expiry, concurrency slots,
debounce, ticks, rate limits, breakers.

Each function runs inside the caller's ``BEGIN IMMEDIATE`` transaction, so a parent's
outcome and the release (or cancellation) of everything that waited on it commit
together, whatever queue the dependents are in; so do a claim and the expiries, holds and
releases it decides. The rules mirror the Redis scripts (``lua/resolve.lua``, ``claim.lua``,
``rate.lua``, ``breaker.lua``) and the memory broker's.

A concurrency *slot* counts its tasks that are ``pending`` or ``running`` (its seats); a
claim holds a task whose slot has its limit of running ones (``scheduled``, ``ready_at``
infinite), and a task leaving its seat for another state *frees* the slot: ``release``
then makes held tasks pending for the seats left. ``Freed`` collects the slots a
transaction freed, ``(queue, slot) -> limit``.
"""

from __future__ import annotations

import json
import sqlite3
from collections import deque
from typing import Any

from runq.brokers.base import BreakerEvent
from runq.brokers.rules import (
    EXPIRED,
    EXPIRED_VERB,
    HELD,
    WAIT,
    breaker_step,
    cascade_later,
    dependency_error,
    first_report,
    free_seats,
    link_verdict,
    parent_error,
    parents_in_order,
    passed_on,
)
from runq.models import Message

Later = deque[tuple[str, str, str | None]]  # (child, parent, error): a cascade's steps into other queues

Freed = dict[tuple[str, str], int]
SEATED = ("pending", "running")
FLOW_COLUMNS = (("deadline", "REAL"), ("slot", "TEXT"), ("concurrency", "INTEGER"))
DEPS_COLUMNS = (("final", "INTEGER NOT NULL DEFAULT 0"),)
BREAKER_SEEN = ("runq_breakers", "seen", "TEXT NOT NULL DEFAULT ''")
FLOW_SCHEMA = """
CREATE INDEX IF NOT EXISTS runq_deadlines ON runq_tasks (queue, deadline)
    WHERE deadline IS NOT NULL AND status IN ('pending', 'scheduled');
CREATE INDEX IF NOT EXISTS runq_seats ON runq_tasks (queue, slot, status)
    WHERE slot IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS runq_held ON runq_tasks (queue, slot, priority DESC, seq)
    WHERE slot IS NOT NULL AND status = 'scheduled';
"""


def migrate(db: sqlite3.Connection) -> None:
    """Give a database made by an older runq the flow-control columns, then their indexes, its
    dependencies their mode and its breakers their seen reports."""
    columns = (
        *(("runq_tasks", *column) for column in FLOW_COLUMNS),
        *(("runq_deps", *column) for column in DEPS_COLUMNS),
        BREAKER_SEEN,
    )
    for table, name, kind in columns:
        if name not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it just now
                if "duplicate column" not in str(exc):
                    raise
    db.executescript(FLOW_SCHEMA)


def link(db: sqlite3.Connection, message: Message, now: float) -> str | None:
    """Record the parents of a just-inserted waiting task; the error that cancels it, if any
    (rules.py: link_verdict, in the message's dependency mode; parent_error, its words)."""
    for parent in parents_in_order(message.after, message.queue):
        row = db.execute(
            "SELECT status, error FROM runq_tasks WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (parent, now),
        ).fetchone()
        verdict = link_verdict(row["status"] if row else None, message.after_final)
        if verdict is None:
            continue
        if verdict != WAIT:
            return parent_error(parent, row["status"] if row else None, row["error"] if row else None)
        db.execute(
            "INSERT OR IGNORE INTO runq_deps (parent, child, final) VALUES (?, ?, ?)",
            (parent, message.id, int(message.after_final)),
        )
    return None


def release_children(
    db: sqlite3.Connection, parent: str, error: str | None, now: float, later: Later | None = None
) -> int:
    """``parent`` just ended: release (``error`` None) or cancel its waiting children, in id order;
    a child in the ``after_final`` mode only counts the parent as ended (rules.py: passed_on).

    Cancellation cascades to the children's own dependents: at once in ``parent``'s queue, and
    into other queues after, in the order reached (``later``: rules.cascade_later). Returns the
    number cancelled.
    """
    if later is None:
        later = deque()
        cancelled = release_children(db, parent, error, now, later)
        while later:
            cancelled += _resolve(db, *later.popleft(), now, later)
        return cancelled
    children = db.execute("SELECT child, final FROM runq_deps WHERE parent = ? ORDER BY child", (parent,)).fetchall()
    if not children:
        return 0
    db.execute("DELETE FROM runq_deps WHERE parent = ?", (parent,))
    cancelled = 0
    for child, final in children:
        cause = passed_on(error, bool(final))
        if cascade_later(parent, child):
            later.append((child, parent, cause))
        else:
            cancelled += _resolve(db, child, parent, cause, now, later)
    return cancelled


def _resolve(db: sqlite3.Connection, child: str, parent: str, error: str | None, now: float, later: Later) -> int:
    """One parent of ``child`` ended (its edge is gone already); the number cancelled."""
    if error is not None:
        return cancel_waiting(db, child, error, now, later)
    if db.execute("SELECT 1 FROM runq_deps WHERE child = ? LIMIT 1", (child,)).fetchone() is None:
        db.execute(
            "UPDATE runq_tasks SET status = CASE WHEN ready_at > ? THEN 'scheduled' ELSE 'pending' END,"
            " ready_at = max(ready_at, ?) WHERE id = ? AND status = 'waiting'",
            (now, now, child),
        )
    return 0


def cancel_waiting(db: sqlite3.Connection, child: str, error: str, now: float, later: Later | None = None) -> int:
    """Cancel a waiting task because a parent did not succeed, and its dependents after it."""
    cursor = db.execute(
        "UPDATE runq_tasks SET status = 'cancelled', error = ?, finished_at = ?, expires_at = ? + result_ttl"
        " WHERE id = ? AND status = 'waiting'",
        (error, now, now, child),
    )
    if cursor.rowcount != 1:
        return 0
    db.execute("DELETE FROM runq_deps WHERE child = ?", (child,))
    cause = json.loads(error)["message"]
    return 1 + release_children(db, child, dependency_error(child, "was cancelled", cause), now, later)


# -- expiry, concurrency slots, debounce, pause (SPEC §9) --------------------------------------


def expire(db: sqlite3.Connection, rows: list[sqlite3.Row], now: float, freed: Freed) -> int:
    """Cancel (Expired) tasks past their deadline that never started, and their dependents.
    ``rows`` have id, queue, status, slot, concurrency. Returns the number cancelled."""
    cancelled = 0
    for row in rows:
        cursor = db.execute(
            "UPDATE runq_tasks SET status = 'cancelled', error = ?, token = NULL, lease_until = NULL,"
            " finished_at = ?, expires_at = ? + result_ttl WHERE id = ? AND status IN ('pending', 'scheduled')",
            (EXPIRED, now, now, row["id"]),
        )
        if cursor.rowcount != 1:
            continue
        if row["slot"] is not None and row["status"] in SEATED:
            freed[(row["queue"], row["slot"])] = row["concurrency"] or 1
        cancelled += 1 + release_children(db, row["id"], dependency_error(row["id"], EXPIRED_VERB), now)
    return cancelled


def expire_due(db: sqlite3.Connection, marks: str, queues: tuple[str, ...], now: float, freed: Freed) -> int:
    rows = db.execute(
        f"SELECT id, queue, status, slot, concurrency FROM runq_tasks WHERE queue IN ({marks})"
        f" AND deadline <= ? AND deadline IS NOT NULL AND status IN ('pending', 'scheduled')",
        (*queues, now),
    ).fetchall()
    return expire(db, rows, now, freed) if rows else 0


def running(db: sqlite3.Connection, queue: str, slot: str) -> int:
    # (the terms of runq_seats's WHERE, repeated: SQLite uses a partial index only when they appear)
    row = db.execute(
        "SELECT count(*) FROM runq_tasks WHERE queue = ? AND slot = ? AND slot IS NOT NULL"
        " AND status IN ('pending', 'running') AND status = 'running'",
        (queue, slot),
    ).fetchone()
    return int(row[0])


def hold(db: sqlite3.Connection, seq: int) -> None:
    """Its slot is full: scheduled without an eta until a seat frees; no attempt used."""
    db.execute("UPDATE runq_tasks SET status = 'scheduled', ready_at = ? WHERE seq = ?", (HELD, seq))


def release(db: sqlite3.Connection, freed: Freed, now: float) -> None:
    """Into every freed slot, release held tasks (highest priority, then oldest) for the seats
    its limit leaves beyond its pending and running tasks."""
    for (queue, slot), limit in sorted(freed.items()):
        seated = db.execute(
            "SELECT count(*) FROM runq_tasks WHERE queue = ? AND slot = ? AND slot IS NOT NULL"
            " AND status IN ('pending', 'running')",
            (queue, slot),
        ).fetchone()[0]
        seats = free_seats(limit, int(seated))
        if seats:
            db.execute(
                "UPDATE runq_tasks SET status = 'pending', ready_at = ? WHERE seq IN (SELECT seq FROM runq_tasks"
                " WHERE queue = ? AND slot = ? AND slot IS NOT NULL AND status = 'scheduled' AND ready_at = ?"
                " ORDER BY priority DESC, seq LIMIT ?)",
                (now, queue, slot, HELD, seats),
            )
    freed.clear()


def seats_of(db: sqlite3.Connection, ids: list[str], freed: Freed) -> None:
    """The slots of tasks about to leave their seats (``ids`` pending or running now). By id
    only (the ``+`` keeps SQLite off the status index, which would scan every pending task
    of the table once per settle batch: measured, 35 -> 120 µs of worker CPU per task).
    Nothing to read when no task holds a seat (one probe of ``runq_seats``): the usual case."""
    if not ids or not any_seated(db):
        return
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = db.execute(
            f"SELECT queue, slot, concurrency FROM runq_tasks WHERE id IN ({','.join('?' * len(chunk))})"
            " AND +slot IS NOT NULL AND +status IN ('pending', 'running')",
            chunk,
        )
        for row in rows:
            freed[(row["queue"], row["slot"])] = row["concurrency"] or 1


def any_seated(db: sqlite3.Connection) -> bool:
    """Whether any task holds a seat of a concurrency slot: the first entry of ``runq_seats``
    (named: SQLite would rather walk ``runq_by_status`` through every pending task)."""
    row = db.execute(
        "SELECT 1 FROM runq_tasks INDEXED BY runq_seats WHERE slot IS NOT NULL AND status IN ('pending', 'running')"
        " LIMIT 1"
    ).fetchone()
    return row is not None


def parents_among(db: sqlite3.Connection, ids: list[str]) -> set[str]:
    """Which of ``ids`` have waiting children: none to look for when no task waits on any."""
    if not ids or db.execute("SELECT 1 FROM runq_deps LIMIT 1").fetchone() is None:
        return set()
    found: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(
            row[0] for row in db.execute(f"SELECT DISTINCT parent FROM runq_deps WHERE parent IN ({marks})", chunk)
        )
    return found


def debounce(db: sqlite3.Connection, holder: str, message: Message, key_ttl: float, now: float, freed: Freed) -> bool:
    """Replace ``holder`` (the task holding the message's key) when it has not started: pending or
    scheduled, no attempt yet. Its eta becomes now + the message's delay (its debounce)."""
    row = db.execute("SELECT status, attempts FROM runq_tasks WHERE id = ?", (holder,)).fetchone()
    if row is None or row["status"] not in ("pending", "scheduled") or row["attempts"] != 0:
        return False
    seats_of(db, [holder], freed)
    db.execute(
        "UPDATE runq_tasks SET name = ?, payload = ?, priority = ?, result_ttl = ?, status = 'scheduled',"
        " ready_at = ?, key_expires_at = ?, deadline = ?, slot = ?, concurrency = ? WHERE id = ?",
        (
            message.name,
            message.payload,
            message.priority,
            message.result_ttl,
            now + message.delay,
            now + key_ttl,
            None if message.expires is None else now + message.expires,
            message.slot,
            message.concurrency,
            holder,
        ),
    )
    return True


def paused(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT queue FROM runq_paused")}


def pause(db: sqlite3.Connection, queue: str, on: bool) -> bool:
    if on:
        return db.execute("INSERT OR IGNORE INTO runq_paused (queue) VALUES (?)", (queue,)).rowcount == 1
    return db.execute("DELETE FROM runq_paused WHERE queue = ?", (queue,)).rowcount == 1


def take_tick(db: sqlite3.Connection, name: str, tick: str, ttl: float, now: float) -> bool:
    db.execute("DELETE FROM runq_ticks WHERE expires_at < ?", (now,))
    cursor = db.execute(
        "INSERT OR IGNORE INTO runq_ticks (name, tick, expires_at) VALUES (?, ?, ?)", (name, tick, now + ttl)
    )
    return cursor.rowcount == 1


def acquire_rate(db: sqlite3.Connection, name: str, rate: float, per: float, now: float) -> float:
    """GCRA without burst: runs start at least ``per / rate`` apart.

    A caller told to wait gets the slot after the last one handed out (``tail``), so a
    crowd of waiting tasks comes back one by one instead of all at the next slot.
    """
    interval = per / rate
    row = db.execute("SELECT tat, tail FROM runq_rates WHERE name = ?", (name,)).fetchone()
    tat, tail = (row["tat"], row["tail"]) if row else (now, now)
    if tat <= now:
        tat, wait = now + interval, 0.0
    else:
        slot = max(tail, tat)
        tail, wait = slot + interval, slot - now
    db.execute(
        "INSERT INTO runq_rates (name, tat, tail) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET tat = excluded.tat, tail = excluded.tail",
        (name, tat, tail),
    )
    return wait


def breaker(
    db: sqlite3.Connection,
    name: str,
    event: BreakerEvent,
    failures: int,
    seconds: float,
    now: float,
    token: str = "",
) -> float:
    """One event on a breaker; ``token``: the claim whose run it reports (rules.first_report)."""
    row = db.execute("SELECT * FROM runq_breakers WHERE name = ?", (name,)).fetchone()
    state: dict[str, Any] = (
        dict(row)
        if row
        else {"name": name, "state": "closed", "failures": 0, "open_until": 0.0, "probe_until": 0.0, "seen": ""}
    )
    if not first_report(state, token):
        return 0.0
    hold = breaker_step(state, event, failures, seconds, now)
    if row or state["state"] != "closed" or state["failures"]:
        db.execute(
            "INSERT OR REPLACE INTO runq_breakers (name, state, failures, open_until, probe_until, seen)"
            " VALUES (:name, :state, :failures, :open_until, :probe_until, :seen)",
            state,
        )
    return hold


def breaker_states(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    rows = db.execute("SELECT name, state, failures, open_until FROM runq_breakers ORDER BY name").fetchall()
    return {row["name"]: {k: row[k] for k in ("state", "failures", "open_until")} for row in rows}
