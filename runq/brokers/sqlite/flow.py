"""Flow control for the SQLite broker: dependencies (``after``), ticks, rate limits, breakers.

Each function runs inside the caller's ``BEGIN IMMEDIATE`` transaction, so a parent's
outcome and the release (or cancellation) of everything that waited on it commit
together, whatever queue the dependents are in. The rules mirror the Redis scripts
(``lua/resolve.lua``, ``rate.lua``, ``breaker.lua``) line for line.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from runq.brokers.base import BreakerEvent
from runq.brokers.rules import breaker_step, dependency_error
from runq.models import Message


def link(db: sqlite3.Connection, message: Message, now: float) -> str | None:
    """Record the parents of a just-inserted waiting task; the error that cancels it, if any.

    A parent that already succeeded needs no row; one that failed, was cancelled or is
    gone (unknown, or expired after its ``result_ttl``) cancels the task at once.
    """
    for parent in dict.fromkeys(message.after):
        row = db.execute(
            "SELECT status FROM runq_tasks WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)", (parent, now)
        ).fetchone()
        status = row["status"] if row else None
        if status == "succeeded":
            continue
        if status in (None, "failed", "cancelled"):
            return dependency_error(parent, {None: "not found", "failed": "failed"}.get(status, "was cancelled"))
        db.execute("INSERT OR IGNORE INTO runq_deps (parent, child) VALUES (?, ?)", (parent, message.id))
    return None


def release_children(db: sqlite3.Connection, parent: str, error: str | None, now: float) -> int:
    """``parent`` just ended: release (``error`` None) or cancel its waiting children.

    Cancellation cascades to the children's own dependents. Returns the number cancelled.
    """
    children = [row[0] for row in db.execute("SELECT child FROM runq_deps WHERE parent = ?", (parent,))]
    if not children:
        return 0
    db.execute("DELETE FROM runq_deps WHERE parent = ?", (parent,))
    cancelled = 0
    for child in children:
        if error is not None:
            cancelled += cancel_waiting(db, child, error, now)
        elif db.execute("SELECT 1 FROM runq_deps WHERE child = ? LIMIT 1", (child,)).fetchone() is None:
            db.execute(
                "UPDATE runq_tasks SET status = CASE WHEN ready_at > ? THEN 'scheduled' ELSE 'pending' END,"
                " ready_at = max(ready_at, ?) WHERE id = ? AND status = 'waiting'",
                (now, now, child),
            )
    return cancelled


def cancel_waiting(db: sqlite3.Connection, child: str, error: str, now: float) -> int:
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
    return 1 + release_children(db, child, dependency_error(child, "was cancelled", cause), now)


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


def breaker(db: sqlite3.Connection, name: str, event: BreakerEvent, failures: int, seconds: float, now: float) -> float:
    row = db.execute("SELECT * FROM runq_breakers WHERE name = ?", (name,)).fetchone()
    state: dict[str, Any] = (
        dict(row) if row else {"name": name, "state": "closed", "failures": 0, "open_until": 0.0, "probe_until": 0.0}
    )
    hold = breaker_step(state, event, failures, seconds, now)
    if row or state["state"] != "closed" or state["failures"]:
        db.execute(
            "INSERT OR REPLACE INTO runq_breakers (name, state, failures, open_until, probe_until)"
            " VALUES (:name, :state, :failures, :open_until, :probe_until)",
            state,
        )
    return hold


def breaker_states(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    rows = db.execute("SELECT name, state, failures, open_until FROM runq_breakers ORDER BY name").fetchall()
    return {row["name"]: {k: row[k] for k in ("state", "failures", "open_until")} for row in rows}
