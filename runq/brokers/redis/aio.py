"""The producer's half of the Redis broker on redis.asyncio: enqueue, read, wait, cancel.

Nothing here is a second definition: the calls are built by the synchronous broker's own
helpers (``RedisBroker.enqueue_plan``, keys.py's layout), sent as the same ``FCALL`` of the
same Functions library (scripts.py: its name and code hash, its ``EVALSHA`` fallback), and
their answers decoded by ``waits.info_of``. Only the I/O is asynchronous. The rare
follow-up that crosses slots (an ``after`` parent or a cancelled task's dependents in
another queue: outbox steps) is handed to the synchronous broker in a thread.

Two clients, as in the synchronous broker: calls share a bounded pool (a burst of ten
thousand ``adelay()`` waits for a free connection instead of opening ten thousand), while
every ``aresult()`` of the loop shares one connection of its own, blocked in ``BLPOP`` on
all their tasks at once (waits.py), so waiters never hold up producers. On
``redis+cluster://`` the client is ``redis.asyncio.cluster.RedisCluster`` and, as in the
synchronous broker, no function is pipelined: each call goes to the node that owns its slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import NoScriptError, ResponseError
from redis.utils import HIREDIS_AVAILABLE

from runq.brokers.aio import AsyncBroker, AsyncFeed
from runq.brokers.redis import connection
from runq.brokers.redis.broker import RedisBroker
from runq.brokers.redis.connection import UNAVAILABLE, unavailable
from runq.brokers.redis.events import AsyncEvents
from runq.brokers.redis.keys import done_key, function_keys
from runq.brokers.redis.scripts import Call, body, library
from runq.brokers.redis.waits import BLOCK_SLICE, AsyncWaits, info_of
from runq.brokers.rules import CANCELLED
from runq.models import Message, TaskInfo, queue_of

T = TypeVar("T")
POOL_SIZE = 64  # connections shared by one loop's enqueue/get/cancel calls


def _missing(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and "function not found" in str(error).lower()


class _HiredisPacking:
    """Pack commands with hiredis, as redis-py's blocking connections do; its asyncio ones pack
    in Python, which cost ~70 of the ~210 µs of one ``adelay()`` here (cProfile)."""

    _serializer = cast(Any, HiredisRespSerializer)()  # untyped in some redis-py majors

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._serializer.pack(*args)  # type: ignore[no-any-return]


def _pack_with_hiredis(pool: Any) -> None:
    """Give ``pool`` a connection class (TCP, TLS or Unix, as the URL chose) that packs with hiredis."""
    if HIREDIS_AVAILABLE:
        base = pool.connection_class
        pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})


class AsyncFunctions:
    """scripts.Functions' calls over an asyncio client; the commands come from the sync one."""

    def __init__(self, client: Any, cluster: bool, functions: Any) -> None:
        self.client = client
        self.cluster = cluster
        self.sync = functions  # builds the FCALL / EVALSHA commands; knows the mode once learnt

    async def load(self) -> None:
        """Load the library (as scripts.Functions.load), so the sync side knows the mode too."""
        try:
            await self.client.function_load(library(), replace=True)
            self.sync.mode = "function"
        except ResponseError as exc:
            text = str(exc).lower()
            if "unknown command" not in text or "function" not in text:
                raise
            self.sync.mode = "script"

    async def command(self, call: Call) -> tuple[Any, ...]:
        if self.sync.mode is None:
            await self.load()
        return tuple(self.sync.command(call))

    async def recover(self, call: Call, error: BaseException) -> Any:
        """Run ``call`` again after its code went missing (a Redis restart); else re-raise."""
        if _missing(error):
            await self.load()
        elif isinstance(error, NoScriptError):
            await self.client.script_load(body(call.name))
        else:
            raise error
        return await self.client.execute_command(*await self.command(call))

    async def run(self, call: Call) -> Any:
        command = await self.command(call)
        try:
            return await self.client.execute_command(*command)
        except (ResponseError, NoScriptError) as exc:
            return await self.recover(call, exc)

    async def batch(self, calls: Sequence[Call], commands: Sequence[tuple[Any, ...]], atomic: bool) -> list[Any]:
        """``calls`` then plain ``commands``: one pipeline on a single Redis (MULTI/EXEC when
        ``atomic``), one by one to their slot's node on a cluster."""
        if self.cluster or (len(calls) == 1 and not commands):
            results = [await self.run(call) for call in calls]
            for command in commands:
                results.append(await self.client.execute_command(*command))
            return results
        pipe = self.client.pipeline(transaction=atomic)
        for call in calls:
            pipe.execute_command(*await self.command(call))
        for command in commands:
            pipe.execute_command(*command)
        results = list(await pipe.execute(raise_on_error=False))
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                if i >= len(calls):
                    raise result
                results[i] = await self.recover(calls[i], result)
        return results


class AsyncRedisBroker(AsyncBroker):
    """:class:`~runq.brokers.aio.AsyncBroker` on redis.asyncio, for one event loop."""

    def __init__(self, broker: RedisBroker, connect_timeout: float = 5.0) -> None:
        super().__init__(broker)
        self.redis = broker
        self.url = broker.url
        self.cluster = broker.cluster
        options: dict[str, Any] = {"socket_connect_timeout": connect_timeout, "retry": Retry(NoBackoff(), 0)}
        timeout = max(connect_timeout, 5.0)
        self._r = self._client(options | {"socket_timeout": timeout}, POOL_SIZE)
        self._blocking = self._client(options | {"socket_timeout": timeout + BLOCK_SLICE}, None)
        self.functions = AsyncFunctions(self._r, self.cluster, broker.functions)
        self._blocking_functions = AsyncFunctions(self._blocking, self.cluster, broker.functions)
        self._waits = AsyncWaits(self)
        self._events = AsyncEvents(self, broker.target)

    def _client(self, options: dict[str, Any], pool_size: int | None) -> Any:
        target = self.redis.target
        if target.kind != "single":  # a cluster, or the master Sentinel names
            return connection.async_client(target, options, pool_size)
        if target.url.lower().startswith("rediss://"):
            options = {"ssl_check_hostname": True, **options}  # as connection.client does
        if pool_size is None:
            pool = redis.asyncio.ConnectionPool.from_url(target.url, **options)
        else:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                target.url, max_connections=pool_size, timeout=None, **options
            )
        _pack_with_hiredis(pool)
        return redis.asyncio.Redis.from_pool(pool)

    async def _guard(self, work: Callable[[], Awaitable[T]]) -> T:
        """redis-py's connection failures as ``BrokerUnavailable`` naming the (masked) URL."""
        try:
            return await work()
        except UNAVAILABLE as exc:
            error = unavailable(self.url, exc)
            if error is exc:
                raise
            raise error from exc

    async def _steps(self, queue: str, steps: Sequence[Any]) -> None:
        """Cross-slot workflow steps (rare): applied by the synchronous broker, in a thread."""
        if steps:
            await asyncio.to_thread(self.redis.apply_steps, queue, steps)

    async def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        return await self._guard(lambda: self._enqueue(messages, key_ttl))

    async def _enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        """As RedisBroker.enqueue: one call per queue, atomic across queues on a single Redis."""
        groups, calls, commands = self.redis.enqueue_plan(messages, key_ttl)
        if not groups:
            return []
        results = await self.functions.batch(calls, commands, atomic=len(groups) > 1)
        ids: list[str] = [""] * len(messages)
        for (queue, indexes), returned in zip(groups.items(), results[: len(groups)], strict=True):
            for i, task_id in zip(indexes, returned, strict=False):  # stops at the ids
                ids[i] = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
            await self._steps(queue, returned[len(indexes) :])  # steps posted for parents elsewhere
        return ids

    async def get(self, task_id: str) -> TaskInfo | None:
        call = Call("watch", function_keys("watch", queue_of(task_id)), [task_id, 0])
        return info_of(task_id, await self._guard(lambda: self.functions.run(call)))

    async def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        """As RedisBroker.wait: every wait of this loop shares one blocking connection (waits.py)."""
        if timeout <= 0:
            return await self.get(task_id)
        return await self._guard(lambda: self._waits.wait(task_id, timeout))

    async def cancel(self, task_id: str) -> bool:
        keys = [*function_keys("cancel", queue_of(task_id)), done_key(task_id)]
        call = Call("cancel", keys, [task_id, CANCELLED])
        done, *steps = await self._guard(lambda: self.functions.run(call))
        await self._steps(queue_of(task_id), steps)
        return bool(done)

    async def follow(self, task_id: str) -> AsyncFeed:
        """As RedisBroker.follow: every feed of this loop shares one subscriber (events.py)."""
        return await self._guard(lambda: self._events.follow(task_id))

    async def _release(self) -> None:
        await self._events.close()
        await self._waits.close()
        for client in (self._r, self._blocking):
            await client.aclose()
            for sentinel in getattr(client, "runq_sentinels", ()):  # connection.async_client
                await sentinel.aclose()


__all__ = ["AsyncFunctions", "AsyncRedisBroker"]
