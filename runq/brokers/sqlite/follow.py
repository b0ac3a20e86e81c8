"""Progress and followers on SQLite (runq/brokers/feed.py).

A task's latest progress is its ``progress`` column (JSON). A followed task has ``watched``
set; a trigger then logs each change of its status or progress in ``runq_events``, whose
``seq`` numbers the changes. The claim and settle statements stay as they are: for a task
nobody follows, the trigger's ``WHEN`` is false and nothing is written. A feed reads the log
from its position, waking on ``PRAGMA data_version`` (it changes when another connection
commits: a look at shared memory, not a query) polled every :data:`POLL` seconds.

The columns are added to a database made by an older runq (``ALTER TABLE``, once).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from runq.brokers.feed import Feed
from runq.errors import TaskNotFound
from runq.models import Event, ProgressReport, TaskInfo, change_event

POLL = 0.025
KEEP = 3600.0  # seconds a change stays in the log (a follower reads it within moments)
# SQLite's clock, to the millisecond: never before the progress it logs (stamped by Python's)
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runq_events (
    seq      INTEGER PRIMARY KEY,
    task     TEXT NOT NULL,
    status   TEXT NOT NULL,
    progress TEXT,
    at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runq_events_task ON runq_events (task, seq);
CREATE TRIGGER IF NOT EXISTS runq_task_changed AFTER UPDATE OF status, progress ON runq_tasks
    FOR EACH ROW WHEN NEW.watched IS NOT NULL
        AND (NEW.status IS NOT OLD.status OR NEW.progress IS NOT OLD.progress)
BEGIN
    INSERT INTO runq_events (task, status, progress, at)
    VALUES (NEW.id, NEW.status, NEW.progress, max({_NOW}, coalesce(json_extract(NEW.progress, '$.at'), 0)));
END;
"""


def ensure(db: sqlite3.Connection) -> None:
    """Add the columns and the log to a database that lacks them (several processes may race:
    the one that loses finds the column there)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runq_tasks)")}
    for column, kind in (("progress", "TEXT"), ("watched", "INTEGER")):
        if column not in columns:
            try:
                db.execute(f"ALTER TABLE runq_tasks ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
    db.executescript(SCHEMA)


def report(db: sqlite3.Connection, reports: Sequence[ProgressReport], now: float) -> list[bool]:
    """Store each run's progress while its claim holds the task (fenced by the token)."""
    return [
        db.execute(
            "UPDATE runq_tasks SET progress = ? WHERE id = ? AND token = ? AND status = 'running'",
            (r.encode(now), r.id, r.token),
        ).rowcount
        == 1
        for r in reports
    ]


def watch(db: sqlite3.Connection, task_id: str, now: float) -> int:
    """Mark a task followed; its log's position now (the changes after it are the feed's).
    In the caller's write transaction, with the read of the task."""
    db.execute("UPDATE runq_tasks SET watched = 1 WHERE id = ? AND watched IS NULL", (task_id,))
    db.execute("DELETE FROM runq_events WHERE at < ?", (now - KEEP,))
    row = db.execute("SELECT coalesce(max(seq), 0) FROM runq_events").fetchone()
    return int(row[0])


class SQLiteFeed(Feed):
    """Reads the log from its position; ``connection`` is the calling thread's (each
    :meth:`next` compares ``data_version`` of one connection only)."""

    def __init__(
        self, task_id: str, first: TaskInfo | None, position: int, connection: Callable[[], sqlite3.Connection]
    ) -> None:
        super().__init__(task_id, first)
        self._position = position
        self._connection = connection

    def next(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        db = self._connection()
        while True:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            rows = db.execute(
                "SELECT seq, status, progress, at FROM runq_events WHERE task = ? AND seq > ? ORDER BY seq",
                (self.task_id, self._position),
            ).fetchall()
            if rows:
                self._position = rows[-1][0]
                return [event for row in rows if (event := change_event(row[1], row[2], row[3])) is not None]
            if db.execute("SELECT 1 FROM runq_tasks WHERE id = ?", (self.task_id,)).fetchone() is None:
                raise TaskNotFound(self.task_id)
            while db.execute("PRAGMA data_version").fetchone()[0] == version:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                time.sleep(min(POLL, remaining))
