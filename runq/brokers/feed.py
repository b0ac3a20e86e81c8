"""Following one task: what ``Handle.events()`` reads, on every broker.

:meth:`Broker.follow <runq.brokers.base.Broker.follow>` opens a :class:`Feed`: the task's
state at that moment (``first``), then, call after call of :meth:`Feed.next`, each change
of its status or progress since, in order. Following costs nothing to the tasks nobody
follows: no extra broker call, nor Redis command, on the claim and settle path.

How a broker hands the changes over differs:

- memory:// keeps a log of a followed task's changes on its record, which a feed reads from
  its position, woken by the broker's condition;
- Redis publishes each change of a followed task (``PUBLISH``) and PostgreSQL notifies it
  (``NOTIFY``, from a trigger); one connection per process (or event loop) listens for all
  the feeds there and pushes each change to the feeds of its task (:class:`Pushed`). Each
  change is numbered by the task (its *version*), so a feed that opened (subscribed, then
  read the task) skips the changes its first read already included. A lost connection, or
  a long silence (:data:`RECHECK`), reads the task again: a change missed meanwhile shows as
  one event with the state read;
- SQLite polls: a feed reads the task when ``PRAGMA data_version`` says another connection
  committed (checked every 25 ms), so states closer together than that show as the latest.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime, timezone

from runq.errors import TaskNotFound
from runq.models import Event, Progress, Status, TaskInfo

RECHECK = 15.0  # a pushed feed that heard nothing for this long reads its task again (a purge notifies no one)

Change = tuple[int, Event]  # (the task's version after the change, the change)


def snapshot(info: TaskInfo) -> Event:
    """A state read (not a change) as an event, dated now: a stream's first, or a resync's."""
    return Event(info.status, info.progress, datetime.now(timezone.utc))


class Feed(ABC):
    """The changes of one task from the moment the feed was opened; see the module docstring."""

    def __init__(self, task_id: str, first: TaskInfo | None) -> None:
        self.task_id = task_id
        self.first = first  # the task when the feed opened; None: there is no such task
        self.closed = False

    @abstractmethod
    def next(self, timeout: float) -> list[Event]:
        """The changes since the last call, in order; waits up to ``timeout`` seconds for one
        (``[]`` when none came). Raises ``TaskNotFound`` once the task is gone (purged)."""

    def close(self) -> None:
        """Stop following (the broker may forget what it kept for this feed)."""
        self.closed = True


class Order:
    """What a feed has shown, no I/O: which changes are new, and what a re-read adds."""

    def __init__(self, first: TaskInfo | None, version: int) -> None:
        self.version = version
        self.last: tuple[Status, Progress | None] | None = None if first is None else (first.status, first.progress)

    def accept(self, changes: list[Change]) -> list[Event]:
        """The changes not shown yet (numbered after the last shown), in order."""
        events = []
        for version, event in sorted(changes, key=lambda change: change[0]):
            if version > self.version:
                self.version = version
                self.last = (event.status, event.progress)
                events.append(event)
        return events

    def reread(self, info: TaskInfo, version: int) -> list[Event]:
        """The task as read again: one event when changes were missed and it looks different."""
        if version <= self.version:
            return []
        self.version = version
        state = (info.status, info.progress)
        if state == self.last:
            return []
        self.last = state
        return [snapshot(info)]


class Pushed(Feed):
    """A feed whose changes a listener pushes (Redis pub/sub, PostgreSQL NOTIFY), in a thread.

    ``reread`` reads the task and its version again (after a lost connection, or
    :data:`RECHECK` seconds of silence); ``release`` tells the listener this feed is done.
    """

    def __init__(
        self,
        task_id: str,
        reread: Callable[[], tuple[TaskInfo | None, int]],
        release: Callable[[Pushed], None],
    ) -> None:
        super().__init__(task_id, None)
        self._reread = reread
        self._release = release
        self._cond = threading.Condition()
        self._changes: list[Change] = []
        self._stale = False
        self._heard = time.monotonic()
        self._order = Order(None, 0)

    def opened(self, first: TaskInfo | None, version: int) -> None:
        """The read made once subscribed: the feed's start."""
        self.first = first
        self._order = Order(first, version)

    def push(self, change: Change) -> None:
        """A change published for this task (from the listener's thread)."""
        with self._cond:
            self._changes.append(change)
            self._cond.notify_all()

    def lost(self) -> None:
        """The listener's connection dropped: changes may have been missed."""
        with self._cond:
            self._stale = True
            self._cond.notify_all()

    def next(self, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._changes and not self._stale:
                now = time.monotonic()
                wait = min(deadline, self._heard + RECHECK) - now
                if wait <= 0:
                    break
                self._cond.wait(wait)
            now = time.monotonic()
            changes, self._changes = self._changes, []
            stale, self._stale = self._stale or now - self._heard >= RECHECK, False
            if changes or stale:
                self._heard = now
        events = self._order.accept(changes)
        if stale:
            info, version = self._reread()
            if info is None:
                raise TaskNotFound(self.task_id)
            events += self._order.reread(info, version)
        return events

    def close(self) -> None:
        super().close()
        self._release(self)


__all__ = ["RECHECK", "Change", "Feed", "Order", "Pushed", "snapshot"]
