"""``LISTEN/NOTIFY`` for the PostgreSQL broker: idle workers and ``result()`` wake on a push.

One thread per broker holds one autocommit connection that listens on three channels:
``<schema>_work`` (payload: a queue that may have work, or whose next due time changed),
``<schema>_done`` (payload: comma-separated ids of tasks that became final) and
``<schema>_events`` (a followed task's change, as JSON: follow.py). Waiters
block on a condition variable; nothing polls the database. When the connection drops
(server restart, ``pg_terminate_backend``) notifications may have been missed, so a
reconnect bumps ``epoch`` and wakes every waiter to look again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from runq.brokers.postgres.follow import change_of

if TYPE_CHECKING:
    from runq.brokers.feed import Pushed

RECONNECT_DELAY = 0.5


class Listener:
    def __init__(
        self, conninfo: str, work_channel: str, done_channel: str, connect_timeout: float, events_channel: str = ""
    ) -> None:
        self._conninfo = conninfo
        self.work_channel = work_channel
        self.done_channel = done_channel
        self.events_channel = events_channel
        self._followers: dict[str, set[Pushed]] = {}  # task id -> its open feeds
        self._connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._work: dict[str, int] = {}
        self._done: dict[str, int] = {}  # only ids someone waits on: watchers' counts
        self._watchers: dict[str, int] = {}
        self.epoch = 0
        self._connected = False
        self._closed = False
        self._interrupted = False  # see interrupt()
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._thread = threading.Thread(target=self._run, name="runq-pg-listen", daemon=True)
        self._thread.start()

    def ready(self, timeout: float) -> bool:
        """Wait until the listener is connected (a notification sent later reaches it)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._connected or self._closed, timeout) and self._connected

    # -- waiting ---------------------------------------------------------------------

    def work_mark(self, queues: Iterable[str]) -> tuple[int, tuple[int, ...]]:
        with self._cond:
            return self.epoch, tuple(self._work.get(q, 0) for q in queues)

    def wait_work(self, queues: Iterable[str], mark: tuple[int, tuple[int, ...]], timeout: float) -> None:
        """Block until one of ``queues`` was notified after ``mark``, a reconnect, or ``timeout``."""
        names = tuple(queues)
        with self._cond:
            self._cond.wait_for(
                lambda: self.work_mark_locked(names) != mark or self._closed or self._interrupted, max(0.0, timeout)
            )

    def interrupt(self) -> None:
        """Every work wait ends now and from now on (its worker is stopping)."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def work_mark_locked(self, queues: tuple[str, ...]) -> tuple[int, tuple[int, ...]]:
        return self.epoch, tuple(self._work.get(q, 0) for q in queues)

    @contextmanager
    def watch(self, task_id: str) -> Iterator[Watch]:
        with self._cond:
            self._watchers[task_id] = self._watchers.get(task_id, 0) + 1
        try:
            yield Watch(self, task_id)
        finally:
            with self._cond:
                left = self._watchers[task_id] - 1
                if left:
                    self._watchers[task_id] = left
                else:
                    del self._watchers[task_id]
                    self._done.pop(task_id, None)

    def follow(self, feed: Pushed) -> None:
        """Push the changes of ``feed``'s task to it from now on."""
        with self._cond:
            self._followers.setdefault(feed.task_id, set()).add(feed)

    def unfollow(self, feed: Pushed) -> None:
        with self._cond:
            feeds = self._followers.get(feed.task_id, set())
            feeds.discard(feed)
            if not feeds:
                self._followers.pop(feed.task_id, None)

    def _done_mark(self, task_id: str) -> tuple[int, int]:
        return self.epoch, self._done.get(task_id, 0)

    # -- the thread ------------------------------------------------------------------

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def _run(self) -> None:
        while not self._closed:
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
                ) as conn:
                    for channel in (self.work_channel, self.done_channel, self.events_channel):
                        if channel:
                            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    with self._cond:
                        self._connected = True
                        self.epoch += 1
                        self._cond.notify_all()
                    while not self._closed:
                        for note in conn.notifies(timeout=5.0):
                            self._deliver(note.channel, note.payload)
                            if self._closed:
                                break
            except psycopg.Error:
                pass
            with self._cond:
                if self._connected:
                    self._connected = False
                    self.epoch += 1
                    self._cond.notify_all()
                followers = [feed for feeds in self._followers.values() for feed in feeds]
            for feed in followers:  # changes may have been missed: each reads its task again
                feed.lost()
            if not self._closed:
                time.sleep(RECONNECT_DELAY)  # back-off between reconnects, not synchronisation

    def _deliver(self, channel: str, payload: str) -> None:
        if channel == self.events_channel:
            self._deliver_change(payload)
            return
        with self._cond:
            if channel == self.work_channel:
                self._work[payload] = self._work.get(payload, 0) + 1
            else:
                for task_id in payload.split(","):
                    if task_id in self._watchers:
                        self._done[task_id] = self._done.get(task_id, 0) + 1
            self._cond.notify_all()

    def _deliver_change(self, payload: str) -> None:
        task_id, change = change_of(payload)
        with self._cond:
            feeds = list(self._followers.get(task_id, ()))
        for feed in feeds:
            if change is None:
                feed.lost()
            else:
                feed.push(change)


class Watch:
    """A registered interest in one task id becoming final."""

    def __init__(self, listener: Listener, task_id: str) -> None:
        self._listener = listener
        self._task_id = task_id
        self.mark = self._current()

    def _current(self) -> tuple[int, int]:
        with self._listener._cond:
            return self._listener._done_mark(self._task_id)

    def wait(self, timeout: float) -> None:
        """Block until the task was notified since the last wait (or a reconnect), or ``timeout``."""
        listener = self._listener
        with listener._cond:
            listener._cond.wait_for(
                lambda: listener._done_mark(self._task_id) != self.mark or listener.closed, max(0.0, timeout)
            )
            self.mark = listener._done_mark(self._task_id)
