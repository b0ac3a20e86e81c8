"""The asyncio edge of the brokers: what ``await task.adelay()`` and ``await handle.aresult()`` speak to.

The brokers stay synchronous (one definition of every state change); this module adapts
them to a running event loop without blocking it. :class:`AsyncBroker` is the small
producer's subset of :class:`~runq.brokers.base.Broker` (enqueue, read, wait, cancel),
plus the readings a web app's status pages make (stats, workers, list), which run the
synchronous broker's own in a thread on every broker: they read every queue, a page
load's worth, never a hot path. Two implementations:

- :class:`ThreadedBroker`, for any broker (SQLite, PostgreSQL): each call runs the
  synchronous method in a thread of small executors of its own, so a burst of
  ``adelay()`` never starves the application's other ``asyncio.to_thread`` work. Waits run
  in slices of at most :data:`THREAD_SLICE` seconds, so an ``aresult()`` that is cancelled
  (a client went away, ``asyncio.wait_for`` gave up) frees its thread soon after.
- ``runq.brokers.redis.aio.AsyncRedisBroker``, native redis.asyncio on the same Functions
  library and key layout as the synchronous Redis broker.

An async broker belongs to one event loop (redis.asyncio connections do); the App keeps
one per loop.

Single enqueues are coalesced (:meth:`AsyncBroker.enqueue_one`): while one call is on its
way to the broker, the ``adelay()`` calls that arrive meanwhile wait for it and then go
together, as one ``enqueue`` of many messages (one Redis function call per queue, one SQL
transaction). A lone producer sees no difference (its batch is of one); a thousand
concurrent producers share round trips instead of queueing for them. Each message keeps
its own id, key and options; a broker error reaches every caller of the batch it was in.
"""

from __future__ import annotations

import asyncio
import builtins
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from runq.brokers.base import Broker
from runq.brokers.feed import Feed
from runq.models import Event, Message, Stats, Status, TaskInfo, WorkerInfo

T = TypeVar("T")
THREAD_SLICE = 1.0  # longest wait one thread makes for an aresult() before the loop looks again
THREADS = 8  # enqueue/get/cancel calls of one loop running at once on a threaded broker
WAITERS = 16  # aresult() waits of one loop running at once on a threaded broker (more queue up)
BATCH = 500  # most single enqueues coalesced into one broker call


class AsyncBroker(ABC):
    """A producer's view of a broker for asyncio code; the semantics are :class:`Broker`'s."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker  # the synchronous broker underneath (same URL, same data)
        self._waiting: list[tuple[Message, float, asyncio.Future[str]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._direct = False  # a caller is sending its own message (nothing else was on its way)
        self._closer: AsyncIterator[None] | None = None
        self.closed = False

    async def close_with_loop(self) -> None:
        """Have this adapter closed when its event loop shuts down, even if nobody calls ``aclose``.

        ``asyncio.run(handle.aresult())`` in synchronous code is natural, and its loop is gone
        right after: connections left open would be closed by the garbage collector with a
        ``ResourceWarning``, after their loop. An async generator started here is finalised by
        the loop's own shutdown (``asyncio.run``, uvicorn: ``shutdown_asyncgens``), while the
        loop still runs, and closes the adapter then.
        """

        async def closer() -> AsyncIterator[None]:
            try:
                yield
            finally:
                await self.aclose()

        self._closer = closer()
        await anext(self._closer)

    async def aclose(self) -> None:
        """Release what this adapter holds (not the synchronous broker: the App closes that)."""
        if not self.closed:
            self.closed = True
            await self._release()

    async def enqueue_one(self, message: Message, key_ttl: float) -> str:
        """Enqueue one message, in a batch with whatever else this loop enqueues meanwhile.

        With nothing else on its way the caller sends its message itself (a lone producer
        pays no extra task). Otherwise it waits for the batches, which a task of their own
        sends, so a caller that is cancelled (its message may be sent anyway, as with any
        call cut off mid-flight) never strands the others.
        """
        if not self._direct and not self._waiting and (self._sender is None or self._sender.done()):
            self._direct = True
            try:
                [task_id] = await self.enqueue([message], key_ttl)
                return task_id
            finally:
                self._direct = False
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, key_ttl, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_batches())
        return await future

    async def _send_batches(self) -> None:
        """Send what waits, batch after batch, until nothing does."""
        batch: list[tuple[Message, float, asyncio.Future[str]]] = []
        try:
            while self._waiting:
                key_ttl = self._waiting[0][1]
                same = next((i for i, item in enumerate(self._waiting) if item[1] != key_ttl), len(self._waiting))
                batch = self._waiting[: min(same, BATCH)]
                del self._waiting[: len(batch)]
                try:
                    ids = await self.enqueue([message for message, _, _ in batch], key_ttl)
                except Exception as exc:  # every caller of this batch gets the broker's error
                    _resolve(batch, exc)
                    continue
                _resolve(batch, ids)
                await self._gather_arrivals()
        finally:  # cancelled (the loop is shutting down): nobody is left waiting forever
            _resolve([*batch, *self._waiting], None)
            self._waiting.clear()

    async def _gather_arrivals(self, turns: int = 4) -> None:
        """Let the callers just answered run for a few loop turns, while more keep arriving: a
        producer's next calls (woken through a semaphore, say) then join the next batch instead
        of trickling into a batch of their own. Costs a few loop turns, not a timer."""
        for _ in range(turns):
            before = len(self._waiting)
            await asyncio.sleep(0)
            if len(self._waiting) == before and before:
                return

    @abstractmethod
    async def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        """As :meth:`Broker.enqueue`: all messages atomically, ids in order."""

    @abstractmethod
    async def get(self, task_id: str) -> TaskInfo | None:
        """As :meth:`Broker.get`."""

    @abstractmethod
    async def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        """As :meth:`Broker.wait`; may return early (not final) — callers loop to their deadline."""

    @abstractmethod
    async def cancel(self, task_id: str) -> bool:
        """As :meth:`Broker.cancel`."""

    async def stats(self) -> Stats:
        """As :meth:`Broker.stats`."""
        return await self._in_thread(self.broker.stats)

    async def workers(self) -> builtins.list[WorkerInfo]:
        """As :meth:`Broker.workers`."""
        return await self._in_thread(self.broker.workers)

    async def list(self, status: Status | None, queue: str | None, limit: int) -> builtins.list[TaskInfo]:
        """As :meth:`Broker.list`."""
        return await self._in_thread(partial(self.broker.list, status, queue, limit))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Run a synchronous broker call without blocking the loop."""
        return await asyncio.to_thread(fn)

    @abstractmethod
    async def follow(self, task_id: str) -> AsyncFeed:
        """As :meth:`Broker.follow`, for ``Handle.aevents()``."""

    @abstractmethod
    async def _release(self) -> None:
        """Close this adapter's own connections or threads (once)."""


class AsyncFeed(ABC):
    """:class:`~runq.brokers.feed.Feed` for asyncio code: the same changes, awaited."""

    def __init__(self, task_id: str, first: TaskInfo | None) -> None:
        self.task_id = task_id
        self.first = first
        self.closed = False

    @abstractmethod
    async def next(self, timeout: float) -> list[Event]:
        """As :meth:`Feed.next`; may return ``[]`` before ``timeout`` (callers loop to their deadline)."""

    async def aclose(self) -> None:
        """Stop following."""
        self.closed = True


def _resolve(
    batch: Sequence[tuple[Message, float, asyncio.Future[str]]], outcome: list[str] | Exception | None
) -> None:
    """Resolve the futures of a batch not resolved yet: ids, an error, or cancelled (``None``)."""
    for i, (_, _, future) in enumerate(batch):
        if future.done():
            continue
        if outcome is None:
            future.cancel()
        elif isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[i])


class ThreadedBroker(AsyncBroker):
    """Any synchronous broker, driven from threads so the event loop never waits on it.

    Two small pools of its own: calls (enqueue, get, cancel) and waits, so long waits never
    hold up enqueues. A thread outlives the coroutine that started it when that coroutine is
    cancelled (a thread cannot be interrupted), so closing first waits for the running ones:
    the broker's connections are never closed under a thread still using them.
    """

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker)
        self._calls = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="runq-async")
        self._waits = ThreadPoolExecutor(max_workers=WAITERS, thread_name_prefix="runq-async-wait")

    async def _call(self, fn: Callable[[], T], executor: ThreadPoolExecutor | None = None) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor or self._calls, fn)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await self._call(fn)  # this adapter's own threads, which closing waits for

    async def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        return await self._call(partial(self.broker.enqueue, messages, key_ttl))

    async def get(self, task_id: str) -> TaskInfo | None:
        return await self._call(partial(self.broker.get, task_id))

    async def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        return await self._call(partial(self.broker.wait, task_id, min(timeout, THREAD_SLICE)), self._waits)

    async def cancel(self, task_id: str) -> bool:
        return await self._call(partial(self.broker.cancel, task_id))

    async def follow(self, task_id: str) -> AsyncFeed:
        return ThreadedFeed(self, await self._call(partial(self.broker.follow, task_id)))

    async def _release(self) -> None:
        await asyncio.to_thread(self.stop_threads)

    def stop_threads(self) -> None:
        """Drop queued calls and wait for the running ones (a wait: at most ``THREAD_SLICE``)."""
        for executor in (self._calls, self._waits):
            executor.shutdown(wait=True, cancel_futures=True)


class ThreadedFeed(AsyncFeed):
    """A broker's own feed, waited on in a thread of the adapter's waits, a slice at a time."""

    def __init__(self, adapter: ThreadedBroker, feed: Feed) -> None:
        super().__init__(feed.task_id, feed.first)
        self._adapter = adapter
        self._feed = feed

    async def next(self, timeout: float) -> list[Event]:
        return await self._adapter._call(partial(self._feed.next, min(timeout, THREAD_SLICE)), self._adapter._waits)

    async def aclose(self) -> None:
        await super().aclose()
        await self._adapter._call(self._feed.close)


__all__ = ["THREAD_SLICE", "AsyncBroker", "AsyncFeed", "ThreadedBroker", "ThreadedFeed"]
