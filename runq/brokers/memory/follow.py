"""Progress and followers on the memory broker (runq/brokers/feed.py): a watched task's
record keeps a log of its changes (``Record.changes``, appended by ``Tables.place`` and by
:func:`report`), which a :class:`MemoryFeed` reads from its position, woken by the broker's
condition."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from runq.brokers.feed import Feed
from runq.errors import TaskNotFound
from runq.models import Event, ProgressReport, Status, change_event

if TYPE_CHECKING:
    from runq.brokers.memory.tables import Record, Tables


def report(tables: Tables, report: ProgressReport, now: float) -> bool:
    """Store one run's progress if its claim still holds the task (fenced by its token)."""
    record = tables.tasks.get(report.id)
    if record is None or record.status is not Status.RUNNING or record.token != report.token:
        return False
    record.progress = report.encode(now)
    if record.changes is not None:
        record.changes.append((record.status, record.progress, now))
    return True


class MemoryFeed(Feed):
    def __init__(self, now: Callable[[], float], cond: threading.Condition, tables: Tables, task_id: str) -> None:
        self._cond, self._tables = cond, tables
        with cond:
            record = tables.tasks.get(task_id)
            if record is not None and not record.visible(now()):
                record = None
            if record is not None and record.changes is None:
                record.changes, record.shown = [], record.status
            super().__init__(task_id, None if record is None else record.info())
            self._record: Record | None = record
            self._seen = 0 if record is None or record.changes is None else len(record.changes)

    def _gone(self) -> bool:
        record = self._record
        return record is None or self._tables.tasks.get(record.id) is not record

    def next(self, timeout: float) -> list[Event]:
        with self._cond:
            record = self._record
            log = record.changes if record is not None else None

            def ready() -> bool:
                return self._gone() or (log is not None and len(log) > self._seen)

            self._cond.wait_for(ready, max(0.0, timeout))
            new = [] if log is None else log[self._seen :]
            self._seen += len(new)
            if not new and self._gone():
                raise TaskNotFound(self.task_id)
        return [event for entry in new if (event := change_event(*entry)) is not None]
