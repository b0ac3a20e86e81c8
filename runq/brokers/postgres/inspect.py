"""Reading the PostgreSQL broker's tasks for people: the filters of ``list``/``purge`` and ``stats``.

Kept apart from the hot path (``postgres.py``): these queries scan by status and queue
through the partial indexes, and never take row locks.
"""

from __future__ import annotations

from typing import Any

from psycopg import Cursor

from runq.brokers.postgres import flow
from runq.brokers.postgres.flow import NOW
from runq.models import COUNTERS, Percentiles, QueueStats, Stats, Status

TASK_COLUMNS = (
    "id, queue, name, status, payload, attempts, result, error, worker, enqueued_at, started_at, finished_at, ready_at,"
    " progress"
)
FIELDS = tuple(column.strip() for column in TASK_COLUMNS.split(","))


def stats(cur: Cursor[Any], s: str) -> Stats:
    """Counts by queue and status, the counters (folded and not yet folded), and wait/run
    percentiles and throughput over the last five minutes of succeeded tasks."""
    queues: dict[str, dict[str, int]] = {}
    live = f"expires_at IS NULL OR expires_at > {NOW}"  # a result past its TTL is gone, deleted or not yet
    for queue, status, n in cur.execute(
        f"SELECT queue, status, count(*) FROM {s}.tasks WHERE {live} GROUP BY queue, status"
    ):
        queues.setdefault(queue, {})[status] = n
    counters = dict.fromkeys(COUNTERS, 0)
    rows = cur.execute(
        f"SELECT name, sum(value)::bigint FROM (SELECT name, value FROM {s}.counters"
        f" UNION ALL SELECT name, value FROM {s}.counter_deltas) AS c GROUP BY name"
    )
    counters.update({name: int(value) for name, value in rows})
    recent = cur.execute(
        f"SELECT ready_at, started_at, finished_at, finished_at >= {NOW} - 60 FROM {s}.tasks"
        f" WHERE status = 'succeeded' AND finished_at >= {NOW} - 300 AND started_at IS NOT NULL"
    ).fetchall()
    return Stats(
        queues={name: QueueStats(**counts) for name, counts in sorted(queues.items())},
        counters=counters,
        wait=Percentiles.of([max(0.0, r[1] - r[0]) for r in recent]),
        run=Percentiles.of([r[2] - r[1] for r in recent]),
        throughput=sum(1 for r in recent if r[3]) / 60.0,
        breakers=flow.breaker_states(cur, s),
    )


def where_clause(status: Status | None, queue: str | None, expired: bool) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause; unless ``expired``, tasks past their expiry are left out."""
    clauses: list[str] = [] if expired else [f"(expires_at IS NULL OR expires_at > {NOW})"]
    params: list[Any] = []
    if status is not None:
        clauses.append("status = %s")
        params.append(status.value)
    if queue is not None:
        clauses.append("queue = %s")
        params.append(queue)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
