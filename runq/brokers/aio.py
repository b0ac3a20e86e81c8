"""The asyncio edge of the brokers: what ``await task.adelay()`` and ``await handle.aresult()`` speak to.

The brokers stay synchronous (one definition of every state change); this module adapts
them to a running event loop without blocking it. :class:`AsyncBroker` is the small
producer's subset of :class:`~runq.brokers.base.Broker` (enqueue, read, wait, cancel).
Two implementations:

- :class:`ThreadedBroker`, for any broker (SQLite, PostgreSQL): each call runs the
  synchronous method in a thread of a small executor of its own, so a burst of
  ``adelay()`` never starves the application's other ``asyncio.to_thread`` work. Waits run
  in slices of at most :data:`THREAD_SLICE` seconds, so an ``aresult()`` that is cancelled
  (a client went away, ``asyncio.wait_for`` gave up) frees its thread soon after.
- ``runq.brokers.redis.aio.AsyncRedisBroker``, native redis.asyncio on the same Functions
  library and key layout as the synchronous Redis broker.

An async broker belongs to one event loop (redis.asyncio connections do); the App keeps
one per loop.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from runq.brokers.base import Broker
from runq.models import Message, TaskInfo

T = TypeVar("T")
THREAD_SLICE = 1.0  # longest wait one thread makes for an aresult() before the loop looks again
THREADS = 8  # enqueue/get/cancel calls of one loop running at once on a threaded broker


class AsyncBroker(ABC):
    """A producer's view of a broker for asyncio code; the semantics are :class:`Broker`'s."""

    broker: Broker  # the synchronous broker underneath (same URL, same data)

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

    @abstractmethod
    async def aclose(self) -> None:
        """Release what this adapter holds (not the synchronous broker: the App closes that)."""


class ThreadedBroker(AsyncBroker):
    """Any synchronous broker, driven from threads so the event loop never waits on it."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="runq-async")

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        return await self._call(partial(self.broker.enqueue, messages, key_ttl))

    async def get(self, task_id: str) -> TaskInfo | None:
        return await self._call(partial(self.broker.get, task_id))

    async def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        # The loop's default executor, not ours: long waits must not hold up enqueues.
        return await asyncio.to_thread(self.broker.wait, task_id, min(timeout, THREAD_SLICE))

    async def cancel(self, task_id: str) -> bool:
        return await self._call(partial(self.broker.cancel, task_id))

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)


def adapt(broker: Broker, connect_timeout: float = 5.0) -> AsyncBroker:
    """The async broker for ``broker``: native on Redis, threads elsewhere. Builds no connection."""
    from runq.brokers.redis.broker import RedisBroker  # redis-py is a core dependency

    if isinstance(broker, RedisBroker):
        from runq.brokers.redis.aio import AsyncRedisBroker

        return AsyncRedisBroker(broker, connect_timeout)
    return ThreadedBroker(broker)


__all__ = ["THREAD_SLICE", "AsyncBroker", "ThreadedBroker", "adapt"]
