"""Progress and followers on SQLite (runq/brokers/feed.py).

A task's latest progress is its ``progress`` column (JSON), added to a database made by an
older runq (``ALTER TABLE``, once). A feed polls: it looks at ``PRAGMA data_version`` every
:data:`POLL` seconds (it changes when another connection commits: a look at shared memory,
not a query) and, when it changed, reads the task's status and progress. Nothing is written
for a follower, so claim and settle pay nothing (a trigger logging changes cost them ~15%).
The price: states closer together than the poll show as one change, the latest (progress is
"latest wins" anyway, and a run's progress is written at most every 0.25 s).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from runq.brokers.feed import Feed
from runq.errors import TaskNotFound
from runq.models import Event, Progress, ProgressReport, Status, TaskInfo, progress_of

POLL = 0.025


def ensure(db: sqlite3.Connection) -> None:
    """Add the progress column to a database that lacks it (several processes may race: the
    one that loses finds the column there)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runq_tasks)")}
    if "progress" not in columns:
        try:
            db.execute("ALTER TABLE runq_tasks ADD COLUMN progress TEXT")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):
                raise


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


class SQLiteFeed(Feed):
    """Polls the task; ``connection`` is the calling thread's (each :meth:`next` compares
    ``data_version`` of one connection only)."""

    def __init__(
        self,
        task_id: str,
        first: TaskInfo | None,
        connection: Callable[[], sqlite3.Connection],
        clock: Callable[[], float],
    ) -> None:
        super().__init__(task_id, first)
        self._connection = connection
        self._clock = clock
        self._last: tuple[Status, Progress | None] | None = None if first is None else (first.status, first.progress)

    def next(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        db = self._connection()
        while True:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            event = self._read(db)
            if event is not None:
                return [event]
            while db.execute("PRAGMA data_version").fetchone()[0] == version:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                time.sleep(min(POLL, remaining))

    def _read(self, db: sqlite3.Connection) -> Event | None:
        """The task as it is now, as an event when it changed since the last one."""
        row = db.execute(
            "SELECT status, progress FROM runq_tasks WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (self.task_id, self._clock()),
        ).fetchone()
        if row is None:
            raise TaskNotFound(self.task_id)
        try:
            status = Status(row[0])
        except ValueError:
            return None
        state = (status, progress_of(row[1]))
        if state == self._last:
            return None
        moved = self._last is None or self._last[0] is not status
        self._last = state
        progress = state[1]
        at = progress.at if progress is not None and not moved else datetime.fromtimestamp(self._clock(), timezone.utc)
        return Event(status, progress, at)
