"""Following tasks on Redis (runq/brokers/feed.py): one pub/sub connection per process (threads)
and one per event loop (asyncio) carries the changes of every task followed there.

A followed task publishes each change of its status or progress on its channel
(``runq:{q}:events:<id>``: lib.lua ``changed``), numbered by its record's ``v``. Opening a
feed subscribes to the channel, waits for Redis to confirm, and only then calls ``follow``
(follow.lua: marks the task followed and reads it, with its ``v``): every change after that
read is published to a connection already subscribed, and a change the read included is
skipped by its number. A channel is subscribed once however many feeds follow its task, and
unsubscribed with its last feed. On a cluster the subscriber talks to one node: Redis
relays a ``PUBLISH`` to every node of the cluster.

A lost connection re-subscribes (redis-py does) and has every feed read its task again.

On asyncio, feeds opening together are opened together: one ``SUBSCRIBE`` of all their
channels, then one pipeline of their ``follow`` calls (one call after another to its slot's
node on a cluster), so a thousand ``aevents()`` streams cost a handful of connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from typing import Any, Protocol

import redis

from runq.brokers.aio import AsyncFeed
from runq.brokers.feed import RECHECK, Change, Order, Pushed
from runq.brokers.redis.connection import UNAVAILABLE, Target
from runq.brokers.redis.keys import events_channel, function_keys
from runq.brokers.redis.scripts import Call
from runq.brokers.redis.waits import info_of
from runq.errors import BrokerUnavailable, TaskNotFound
from runq.logs import mask_url
from runq.models import Event, TaskInfo, change_event, queue_of


class Source(Protocol):
    """What a hub uses of ``RedisBroker`` / ``AsyncRedisBroker`` (named structurally: this
    module sits below both and imports neither)."""

    url: str
    functions: Any  # runs follow.lua / watch.lua (sync or async)
    _r: Any  # the shared client: its pubsub() is the subscriber on one Redis or a Sentinel master


log = logging.getLogger("runq.broker")
LISTEN_SLICE = 1.0  # longest single read of the subscriber, so a closed hub is noticed
CONFIRM = 10.0  # seconds to wait for Redis to confirm a subscription
BACKOFF = 0.5  # after a lost connection, before reading again (redis-py reconnects and re-subscribes)


def follow_call(task_id: str, watch: bool) -> Call:
    """``follow`` (mark followed, then read) or ``watch`` (read only), both answering
    ``{record JSON, payload}``."""
    name = "follow" if watch else "watch"
    return Call(name, function_keys(name, queue_of(task_id)), [task_id] if watch else [task_id, 0])


def read_answer(task_id: str, found: Any) -> tuple[TaskInfo | None, int]:
    """A task and the number of its last published change, from ``follow``/``watch``."""
    info = info_of(task_id, found)
    if info is None:
        return None, 0
    version = json.loads(found[0]).get("v", 0)
    return info, version if isinstance(version, int) else 0


def change_of(data: Any) -> Change | None:
    """A published change (JSON ``{v, status, progress, at}``); ``None`` if it does not read."""
    try:
        change = json.loads(data)
        version, event = change["v"], change_event(change["status"], change.get("progress"), change.get("at"))
    except (ValueError, KeyError, TypeError):
        return None
    return None if event is None or not isinstance(version, int) else (version, event)


def subscriber_options(target: Target) -> tuple[str, int, dict[str, Any]] | None:
    """Where a cluster's subscriber connects (its first node: every node relays a publish);
    ``None`` elsewhere (the broker's own client gives the subscriber)."""
    if not target.cluster:
        return None
    host, port = target.hosts[0]
    return host, port, {"username": target.username, "password": target.password}


def _channel(message: dict[str, Any]) -> str:
    channel = message.get("channel")
    return channel.decode() if isinstance(channel, bytes) else str(channel)


class _Book:
    """Which feeds follow which channel; no I/O (both hubs keep one)."""

    def __init__(self) -> None:
        self.feeds: dict[str, set[Any]] = {}
        self.confirmed: set[str] = set()

    def add(self, channel: str, feed: Any) -> bool:
        """Count ``feed`` in; ``True`` when its channel is new (subscribe it)."""
        feeds = self.feeds.setdefault(channel, set())
        feeds.add(feed)
        return len(feeds) == 1

    def drop(self, channel: str, feed: Any) -> bool:
        """Count ``feed`` out; ``True`` when its channel has no feed left (unsubscribe it)."""
        feeds = self.feeds.get(channel, set())
        if feed not in feeds:
            return False
        feeds.discard(feed)
        if feeds:
            return False
        del self.feeds[channel]
        self.confirmed.discard(channel)
        return True

    def deliver(self, message: dict[str, Any]) -> None:
        """A message of the subscriber: a confirmation, or a change for the channel's feeds."""
        channel = _channel(message)
        if message.get("type") == "subscribe":
            if channel in self.feeds:
                self.confirmed.add(channel)
            return
        if message.get("type") != "message":
            return
        change = change_of(message.get("data"))
        for feed in list(self.feeds.get(channel, ())):
            if change is None:
                feed.lost()
            else:
                feed.push(change)

    def everyone(self) -> list[Any]:
        return [feed for feeds in self.feeds.values() for feed in feeds]


# -- threads ------------------------------------------------------------------------------


class ThreadEvents:
    """One subscriber connection and one listening thread per broker and process."""

    def __init__(self, broker: Source, target: Target) -> None:
        self._broker = broker
        self._target = target
        self._cond = threading.Condition()
        self._book = _Book()
        self._pubsub: Any = None
        self._own_client: Any = None  # the subscriber's own client, on a cluster
        self._thread: threading.Thread | None = None
        self._closed = False

    def follow(self, task_id: str) -> Pushed:
        channel = events_channel(task_id)
        feed = Pushed(task_id, lambda: self._read(task_id, False), lambda f: self._release(channel, f))
        with self._cond:
            if self._closed:
                raise BrokerUnavailable(f"Redis at {mask_url(self._broker.url)}: the broker was closed")
            new = self._book.add(channel, feed)
        try:
            with self._cond:
                if self._pubsub is None:
                    self._pubsub = self._subscriber()
                if new:
                    self._pubsub.subscribe(channel)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._listen, name="runq-redis-events", daemon=True)
                    self._thread.start()
                confirmed = self._cond.wait_for(lambda: channel in self._book.confirmed or self._closed, CONFIRM)
            if not confirmed or self._closed:
                raise BrokerUnavailable(f"Redis at {mask_url(self._broker.url)} did not confirm a subscription")
            feed.opened(*self._read(task_id, True))
        except BaseException:
            feed.close()
            raise
        return feed

    def _read(self, task_id: str, watch: bool) -> tuple[TaskInfo | None, int]:
        return read_answer(task_id, self._broker.functions.run(*follow_call(task_id, watch)))

    def _subscriber(self) -> Any:
        where = subscriber_options(self._target)
        if where is None:
            return self._broker._r.pubsub()
        host, port, auth = where
        # Kept while the subscriber lives: a client left to the collector closes its pool, and
        # with it the subscriber's connection.
        self._own_client = redis.Redis(host, port, **auth, socket_connect_timeout=5.0)
        return self._own_client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]  # untyped before redis-py 8

    def _release(self, channel: str, feed: Pushed) -> None:
        with self._cond:
            if self._book.drop(channel, feed) and self._pubsub is not None and not self._closed:
                with contextlib.suppress(*UNAVAILABLE):  # gone with the connection anyway
                    self._pubsub.unsubscribe(channel)

    def _listen(self) -> None:
        while True:
            with self._cond:
                if self._closed or not self._book.feeds:
                    self._thread = None
                    return
                pubsub = self._pubsub
            try:
                message = pubsub.get_message(timeout=LISTEN_SLICE)
            except (*UNAVAILABLE, OSError) as exc:
                log.debug("Redis events connection lost: %s", exc)
                with self._cond:
                    feeds = self._book.everyone()
                for feed in feeds:
                    feed.lost()
                time.sleep(BACKOFF)  # the next read reconnects; a pause, not synchronisation
                continue
            if message is not None:
                with self._cond:
                    self._book.deliver(message)
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pubsub, self._pubsub = self._pubsub, None
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(LISTEN_SLICE * 2)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
        client, self._own_client = self._own_client, None
        if client is not None:
            client.close()


# -- asyncio ------------------------------------------------------------------------------


class AsyncPushed(AsyncFeed):
    """:class:`~runq.brokers.feed.Pushed` for one event loop."""

    def __init__(self, task_id: str, hub: AsyncEvents) -> None:
        super().__init__(task_id, None)
        self._hub = hub
        self._changes: list[Change] = []
        self._stale = False
        self._wake = asyncio.Event()
        self._heard = time.monotonic()
        self._order = Order(None, 0)

    def opened(self, first: TaskInfo | None, version: int) -> None:
        self.first = first
        self._order = Order(first, version)

    def push(self, change: Change) -> None:
        self._changes.append(change)
        self._wake.set()

    def lost(self) -> None:
        self._stale = True
        self._wake.set()

    async def next(self, timeout: float) -> list[Event]:
        wait = min(timeout, self._heard + RECHECK - time.monotonic())
        if not self._changes and not self._stale and wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        self._wake.clear()
        now = time.monotonic()
        changes, self._changes = self._changes, []
        stale, self._stale = self._stale or now - self._heard >= RECHECK, False
        if changes or stale:
            self._heard = now
        events = self._order.accept(changes)
        if stale:
            info, version = await self._hub.read(self.task_id, False)
            if info is None:
                raise TaskNotFound(self.task_id)
            events += self._order.reread(info, version)
        return events

    async def aclose(self) -> None:
        await super().aclose()
        await self._hub.release(self)


class AsyncEvents:
    """One subscriber connection and one listening task per event loop."""

    def __init__(self, broker: Source, target: Target) -> None:
        self._broker = broker
        self._target = target
        self._book = _Book()
        self._pubsub: Any = None
        self._own_client: Any = None  # the subscriber's own client, on a cluster
        self._listener: asyncio.Task[None] | None = None
        self._confirmed = asyncio.Condition()
        self._opening: list[tuple[AsyncPushed, asyncio.Future[None]]] = []
        self._opener: asyncio.Task[None] | None = None

    async def follow(self, task_id: str) -> AsyncPushed:
        feed = AsyncPushed(task_id, self)
        opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening.append((feed, opened))
        if self._opener is None or self._opener.done():
            self._opener = asyncio.create_task(self._open_all())
        try:
            await opened
        except BaseException:
            await self.release(feed)
            raise
        return feed

    async def _open_all(self) -> None:
        """Open every feed waiting, batch after batch (see the module docstring)."""
        while self._opening:
            await asyncio.sleep(0)  # let the feeds asked for in the same turn join this batch
            batch, self._opening = self._opening, []
            try:
                await self._open(batch)
            except BaseException as exc:
                for _, opened in batch:
                    if not opened.done():
                        opened.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                if not isinstance(exc, Exception):
                    raise

    async def _open(self, batch: list[tuple[AsyncPushed, asyncio.Future[None]]]) -> None:
        if self._pubsub is None:
            self._pubsub = self._subscriber()
        channels = [events_channel(feed.task_id) for feed, _ in batch]
        new = [channel for (feed, _), channel in zip(batch, channels, strict=True) if self._book.add(channel, feed)]
        if new:
            await self._pubsub.subscribe(*dict.fromkeys(new))
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())
        try:
            async with self._confirmed:
                await asyncio.wait_for(
                    self._confirmed.wait_for(lambda: all(c in self._book.confirmed for c in channels)), CONFIRM
                )
        except TimeoutError:
            raise BrokerUnavailable(f"Redis at {mask_url(self._broker.url)} did not confirm a subscription") from None
        calls = [follow_call(feed.task_id, True) for feed, _ in batch]
        answers = await self._broker.functions.batch(calls, [], atomic=False)
        for (feed, opened), answer in zip(batch, answers, strict=True):
            feed.opened(*read_answer(feed.task_id, answer))
            if not opened.done():
                opened.set_result(None)

    async def read(self, task_id: str, watch: bool) -> tuple[TaskInfo | None, int]:
        return read_answer(task_id, await self._broker.functions.run(follow_call(task_id, watch)))

    def _subscriber(self) -> Any:
        where = subscriber_options(self._target)
        if where is None:
            return self._broker._r.pubsub()
        import redis.asyncio

        host, port, auth = where
        self._own_client = redis.asyncio.Redis(host=host, port=port, **auth, socket_connect_timeout=5.0)
        return self._own_client.pubsub()  # kept while the subscriber lives (see ThreadEvents)

    async def release(self, feed: AsyncPushed) -> None:
        channel = events_channel(feed.task_id)
        if self._book.drop(channel, feed) and self._pubsub is not None:
            with contextlib.suppress(*UNAVAILABLE):
                await self._pubsub.unsubscribe(channel)

    async def _listen(self) -> None:
        while self._book.feeds or self._opening:
            try:
                message = await self._pubsub.get_message(timeout=LISTEN_SLICE)
            except (*UNAVAILABLE, OSError) as exc:
                log.debug("Redis events connection lost: %s", exc)
                for feed in self._book.everyone():
                    feed.lost()
                await asyncio.sleep(BACKOFF)
                continue
            if message is not None:
                self._book.deliver(message)
                if message.get("type") == "subscribe":
                    async with self._confirmed:
                        self._confirmed.notify_all()

    async def close(self) -> None:
        for task in (self._opener, self._listener):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        client, self._own_client = self._own_client, None
        if client is not None:
            await client.aclose()


__all__ = ["AsyncEvents", "AsyncPushed", "ThreadEvents", "change_of", "follow_call", "read_answer"]
