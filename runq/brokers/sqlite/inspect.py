"""Reading the SQLite broker's tasks for people: the filters of ``list``/``purge`` and ``stats``.

Plain reads on the caller's connection (WAL: they never block a writer), off the hot path.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from runq.brokers.sqlite import flow
from runq.models import COUNTERS, Percentiles, QueueStats, Stats, Status


def stats(db: sqlite3.Connection, now: float) -> Stats:
    """Counts by queue and status, the counters, and wait/run percentiles and throughput over
    the last five minutes of succeeded tasks (``now``: the broker's clock)."""
    queues: dict[str, dict[str, int]] = {}
    live = "expires_at IS NULL OR expires_at > ?"  # a result past its TTL is gone, deleted or not yet
    for row in db.execute(
        f"SELECT queue, status, count(*) AS n FROM runq_tasks WHERE {live} GROUP BY queue, status", (now,)
    ):
        queues.setdefault(row["queue"], {})[row["status"]] = row["n"]
    counters = dict.fromkeys(COUNTERS, 0)
    counters.update({row["name"]: row["value"] for row in db.execute("SELECT name, value FROM runq_counters")})
    recent = db.execute(
        "SELECT ready_at, started_at, finished_at FROM runq_tasks"
        " WHERE finished_at >= ? AND started_at IS NOT NULL AND status = 'succeeded'",
        (now - 300,),
    ).fetchall()
    last_minute = sum(1 for row in recent if row["finished_at"] >= now - 60)
    return Stats(
        queues={name: QueueStats(**counts) for name, counts in sorted(queues.items())},
        counters=counters,
        wait=Percentiles.of([max(0.0, r["started_at"] - r["ready_at"]) for r in recent]),
        run=Percentiles.of([r["finished_at"] - r["started_at"] for r in recent]),
        throughput=last_minute / 60.0,
        breakers=flow.breaker_states(db),
    )


def where_clause(status: Status | None, queue: str | None, now: float | None = None) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause; with ``now``, tasks past their expiry are left out."""
    clauses: list[str] = []
    params: list[Any] = []
    if now is not None:
        clauses.append("(expires_at IS NULL OR expires_at > ?)")
        params.append(now)
    if status is not None:
        clauses.append("status = ?")
        params.append(status.value)
    if queue is not None:
        clauses.append("queue = ?")
        params.append(queue)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
