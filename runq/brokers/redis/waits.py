"""Result waits on Redis, shared: one blocking connection per process (threads) and one per
event loop (asyncio) waits for every task anyone there awaits.

A wait used to BLPOP its task's done list on a connection of its own, so a few hundred
concurrent ``result()`` / ``aresult()`` calls opened a few hundred connections, until a pool
(or the server's ``maxclients``) refused one and the waiter read that as an outage.

Now each wait hands its task to a :class:`WaitBook` and sleeps on an event of its own. One
driver (a thread, :class:`ThreadWaits`; an asyncio task, :class:`AsyncWaits`) runs the book's
rounds on one connection, each round one round trip on a single Redis:

    1. ``unwatch`` for the tasks nobody here awaits any more; ``watch`` (register) for the
       tasks newly awaited: counted once per process however many wait on them, or answered
       at once when already final; ``watch`` (read only) for tasks not heard of for
       ``RECHECK`` seconds (a purge deletes a task without notifying anyone);
    2. one BLPOP on the book's wake list and every awaited task's done list.

The one token a task's end pushes is fanned out here to all its waiters. A wait that arrives
while a BLPOP is in flight pushes the wake list (once per round), so it is registered at once,
not when the slice ends. On a cluster one BLPOP reaches one slot: the rounds take the queues
in turn, in short slices when there are several.

The book does no I/O and reads no clock (``now`` is passed in): the two drivers are the same
algorithm over different I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from redis.exceptions import ResponseError

from runq.brokers.redis.connection import unavailable
from runq.brokers.redis.keys import done_key, function_keys, waits_key
from runq.brokers.redis.scripts import Call
from runq.errors import BrokerUnavailable
from runq.logs import mask_url
from runq.models import TaskInfo, queue_of, task_info


class SyncSource(Protocol):
    """What the thread driver uses of ``RedisBroker`` (named structurally: this module sits
    below both brokers and imports neither)."""

    url: str
    cluster: bool
    _r: Any  # the shared client: registrations and wake pushes
    _blocking: Any  # the blocking client: the BLPOP
    _blocking_functions: Any

    def get(self, task_id: str) -> TaskInfo | None: ...


class AsyncSource(Protocol):
    """What the event-loop driver uses of ``AsyncRedisBroker``."""

    url: str
    cluster: bool
    _r: Any
    _blocking: Any
    _blocking_functions: Any

    async def get(self, task_id: str) -> TaskInfo | None: ...


BLOCK_SLICE = 5.0  # longest single blocking call, so a lost connection is noticed
CLUSTER_SLICE = 0.05  # per-queue blocking slice when the queues live in different slots
INTERRUPT_SLICE = 0.25  # a cluster worker's idle wait on one queue: how soon it sees interrupt()
RECHECK = BLOCK_SLICE  # read an awaited task's state again when not heard of for this long
IDLE = 10.0  # a driver with nothing to wait for ends after this long
PLAIN_TOKENS = (b"1", b"gone", "1", "gone")  # a wake-up without the state (outbox.py), or gone


def info_of(task_id: str, found: Any) -> TaskInfo | None:
    """A TaskInfo from watch.lua's answer or a done token ({record, payload}, or nil)."""
    if not found:
        return None
    payload = found[1].decode() if isinstance(found[1], bytes) else found[1]
    record: dict[str, Any] = json.loads(found[0])
    record.update(id=task_id, queue=queue_of(task_id), payload=payload)
    return task_info(record)


def ceil_ms(seconds: float) -> float:
    """A positive blocking timeout rounded up to whole milliseconds (0 would block forever)."""
    return max(0.001, math.ceil(seconds * 1000) / 1000)


class Waiter:
    """One ``wait()`` call: resolved once, with the task's final state, ``None`` (no such
    task) or an error; ``last`` is the latest state read before, for a wait that times out."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.done = False
        self.outcome: TaskInfo | None = None
        self.error: BaseException | None = None
        self.seen = False
        self.last: TaskInfo | None = None

    def resolve(self, outcome: TaskInfo | None, error: BaseException | None = None) -> None:
        if not self.done:
            self.done, self.outcome, self.error = True, outcome, error
            self.notify()

    def notify(self) -> None:
        """Wake whoever sleeps on this waiter (a thread's Event, a coroutine's Future)."""

    def answer(self) -> TaskInfo | None:
        if self.error is not None:
            raise self.error
        return self.outcome


@dataclass
class _Awaited:
    waiters: set[Waiter] = field(default_factory=set)
    watched: bool = False  # watch.lua counted this process in the task's waiters
    sent: bool = False  # a registering watch is on its way
    checked: float = 0.0  # when its state was last read (the driver's monotonic clock)
    last: TaskInfo | None = None


class Step(NamedTuple):
    task_id: str
    call: Call
    registers: bool  # a registering watch (its reply says whether this process is counted)


@dataclass(frozen=True)
class Round:
    steps: list[Step]  # unwatch, then watch: before the BLPOP, in this order
    keys: list[str]  # the BLPOP's keys, the wake list first; empty: no BLPOP this round
    block: float


class WaitBook:
    """The awaited tasks and their waiters; plans each round and reads its replies (no I/O)."""

    def __init__(self, cluster: bool) -> None:
        self.hub = secrets.token_hex(8)
        self.cluster = cluster
        self._awaited: dict[str, _Awaited] = {}
        self._unwatch: set[str] = set()
        self._by_key: dict[str, str] = {}  # done list -> task id
        self._blocking_on: str | None = None  # the wake list of the BLPOP in flight
        self._woken = False
        self._turn = 0  # cluster: the queue whose done lists the next BLPOP takes

    def add(self, waiter: Waiter) -> str | None:
        """Count ``waiter`` in; the wake list to push when the BLPOP in flight must end to register it."""
        entry = self._awaited.setdefault(waiter.task_id, _Awaited())
        entry.waiters.add(waiter)
        if entry.watched:
            waiter.seen, waiter.last = True, entry.last
        return None if entry.watched or entry.sent else self._wake()

    def drop(self, waiter: Waiter) -> str | None:
        """A wait that ended (timed out, cancelled, answered); its task's registration goes with
        its last waiter. The wake list to push, when the BLPOP in flight should end to unwatch."""
        entry = self._awaited.get(waiter.task_id)
        if entry is None or waiter not in entry.waiters:
            return None
        entry.waiters.discard(waiter)
        if entry.waiters:
            return None
        del self._awaited[waiter.task_id]
        if not entry.watched:
            return None
        self._unwatch.add(waiter.task_id)
        return self._wake()

    def _wake(self) -> str | None:
        if self._blocking_on is None or self._woken:
            return None
        self._woken = True
        return self._blocking_on

    def wake_key(self) -> str | None:
        """The wake list of the BLPOP in flight, if any (to end it at close)."""
        return self._blocking_on

    def next_round(self, now: float) -> Round | None:
        """What to send next; ``None`` when nothing is awaited or owed (the driver may idle)."""
        steps = [Step(task_id, _unwatch(task_id), False) for task_id in sorted(self._unwatch)]
        self._unwatch.clear()
        for task_id, entry in self._awaited.items():
            if not entry.watched and not entry.sent:
                entry.sent, entry.checked = True, now
                steps.append(Step(task_id, _watch(task_id, True), True))
            elif entry.watched and now - entry.checked >= RECHECK:
                entry.checked = now
                steps.append(Step(task_id, _watch(task_id, False), False))
        keys, block = self._blocking()
        if not steps and not keys:
            return None
        self._blocking_on, self._woken = (keys[0] if keys else None), False
        return Round(steps, keys, block)

    def _blocking(self) -> tuple[list[str], float]:
        ids = list(self._awaited)
        if not ids:
            return [], 0.0
        block = BLOCK_SLICE
        wake = waits_key(self.hub, None)
        if self.cluster:
            queues = sorted({queue_of(task_id) for task_id in ids})
            queue = queues[self._turn % len(queues)]
            self._turn += 1
            ids = [task_id for task_id in ids if queue_of(task_id) == queue]
            block = BLOCK_SLICE if len(queues) == 1 else CLUSTER_SLICE
            wake = waits_key(self.hub, queue)
        self._by_key = {done_key(task_id): task_id for task_id in ids}
        return [wake, *self._by_key], block

    def on_step(self, step: Step, reply: Any) -> None:
        """The reply to one step: a state read (final: the waiters are answered), or an error."""
        if step.call.name == "unwatch":
            return
        entry = self._awaited.get(step.task_id)
        if isinstance(reply, Exception):
            if entry is not None:
                self._finish(step.task_id, None, reply)
            return
        info = info_of(step.task_id, reply)
        ended = info is None or info.status.final
        if entry is None:  # nobody waits any more: stop being counted
            if step.registers and not ended:
                self._unwatch.add(step.task_id)
            return
        if step.registers:
            entry.sent = False
        if ended:
            self._finish(step.task_id, info)
            return
        entry.watched = entry.watched or step.registers
        entry.last = info
        for waiter in entry.waiters:
            waiter.seen, waiter.last = True, info

    def on_pop(self, popped: Any) -> None:
        """The BLPOP's reply: nothing (the slice ran out), the wake list, or a task's done token."""
        self._blocking_on = None
        if popped is None:
            return
        key, token = popped[0], popped[1]
        task_id = self._by_key.get(key.decode() if isinstance(key, bytes) else key)
        entry = None if task_id is None else self._awaited.get(task_id)
        if task_id is None or entry is None:  # the wake list, or a token nobody here needs any more
            return
        if token in PLAIN_TOKENS:  # the state is not in the token: read it (and register) again
            entry.watched = entry.sent = False
            return
        self._finish(task_id, info_of(task_id, json.loads(token)))

    def end_round(self) -> None:
        self._blocking_on = None

    def fail(self, error: BaseException) -> None:
        """The connection failed: every wait ends with ``error``; the next ones start afresh."""
        for task_id in list(self._awaited):
            self._finish(task_id, None, error)
        self._unwatch.clear()
        self._blocking_on = None

    def _finish(self, task_id: str, info: TaskInfo | None, error: BaseException | None = None) -> None:
        entry = self._awaited.pop(task_id)
        for waiter in entry.waiters:
            waiter.resolve(info, error)


def _watch(task_id: str, register: bool) -> Call:
    keys = function_keys("watch", queue_of(task_id))
    return Call("watch", [*keys, done_key(task_id)] if register else keys, [task_id, int(register)])


def _unwatch(task_id: str) -> Call:
    return Call("unwatch", function_keys("unwatch", queue_of(task_id)), [task_id])


def _closed(url: str) -> BrokerUnavailable:
    return BrokerUnavailable(f"Redis at {mask_url(url)}: the broker was closed while this wait was on")


# -- the thread driver ----------------------------------------------------------------------


class _ThreadWaiter(Waiter):
    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.event = threading.Event()

    def notify(self) -> None:
        self.event.set()


class ThreadWaits:
    """The book's driver for threads: one daemon thread per broker and process, started by the
    first wait and ended after ``IDLE`` seconds with nothing to wait for. Its BLPOP runs on the
    broker's blocking client (that thread's own connection); waiters push the wake list through
    the broker's shared client, one at a time."""

    def __init__(self, broker: SyncSource) -> None:
        self._broker = broker
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._push_lock = threading.Lock()
        self._book = WaitBook(self._broker.cluster)
        self._thread: threading.Thread | None = None
        self._closed = False

    def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        if self._pid != os.getpid():  # a forked child: the thread and its socket are the parent's
            self._reset()
        waiter = _ThreadWaiter(task_id)
        with self._cond:
            if self._closed:
                raise _closed(self._broker.url)
            wake = self._book.add(waiter)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="runq-redis-waits", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            if wake is not None:
                self._push(wake)
            waiter.event.wait(timeout)
        finally:
            with self._cond:
                wake = self._book.drop(waiter)
        if wake is not None:
            self._push(wake)
        if waiter.done:
            return waiter.answer()
        return waiter.last if waiter.seen else self._broker.get(task_id)

    def _push(self, key: str) -> None:
        with self._push_lock:
            pipe = self._broker._r.pipeline(transaction=False)
            pipe.rpush(key, 1).pexpire(key, 10000)
            pipe.execute()

    def _run(self) -> None:
        while True:
            with self._cond:
                plan = self._next()
                if plan is None:
                    return
            try:
                replies, popped = self._send(plan)
            except Exception as exc:  # the connection failed (or worse): every current wait hears it
                with self._cond:
                    self._book.fail(unavailable(self._broker.url, exc))
                continue
            with self._cond:
                for step, reply in zip(plan.steps, replies, strict=True):
                    self._book.on_step(step, reply)
                self._book.on_pop(popped)

    def _next(self) -> Round | None:
        """The next round, waiting (lock held) for work up to ``IDLE``; ``None``: the thread ends."""
        idle_until = time.monotonic() + IDLE
        while not self._closed:
            plan = self._book.next_round(time.monotonic())
            if plan is not None:
                return plan
            left = idle_until - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        self._thread = None
        return None

    def _send(self, plan: Round) -> tuple[list[Any], Any]:
        functions = self._broker._blocking_functions
        replies: list[Any] = []
        if self._broker.cluster:  # no pipelined functions: each call to its slot's node
            for step in plan.steps:
                try:
                    replies.append(functions.run(*step.call))
                except ResponseError as exc:
                    replies.append(exc)
            popped = self._broker._blocking.blpop(plan.keys, ceil_ms(plan.block)) if plan.keys else None
            return replies, popped
        commands = [functions.command(step.call) for step in plan.steps]
        if plan.keys:
            commands.append(("BLPOP", *plan.keys, ceil_ms(plan.block)))
        replies = functions.send(commands)
        popped = replies.pop() if plan.keys else None
        if isinstance(popped, Exception):
            raise popped
        pairs = zip(plan.steps, replies, strict=True)
        return [_recovered(functions, step.call, reply) for step, reply in pairs], popped

    def close(self) -> None:
        """End every wait and the thread (its BLPOP woken through the wake list, if it can be)."""
        with self._cond:
            self._closed = True
            wake, thread = self._book.wake_key(), self._thread
            self._book.fail(_closed(self._broker.url))
            self._cond.notify_all()
        if wake is not None and thread is not None:
            with contextlib.suppress(Exception):  # closing anyway: closing the sockets ends the BLPOP
                self._push(wake)
            thread.join(1.0)


def _recovered(functions: Any, call: Call, reply: Any) -> Any:
    """A step's reply, run again when its code went missing (a Redis restart); else the error."""
    if not isinstance(reply, Exception):
        return reply
    try:
        return functions.recover(call, reply)
    except ResponseError as exc:
        return exc


# -- the asyncio driver ---------------------------------------------------------------------


class _FutureWaiter(Waiter):
    def __init__(self, task_id: str, future: asyncio.Future[None]) -> None:
        super().__init__(task_id)
        self.future = future

    def notify(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class AsyncWaits:
    """The book's driver for one event loop: one task, started by the first ``aresult()``
    and ended after ``IDLE`` seconds with nothing to wait for, on one connection."""

    def __init__(self, broker: AsyncSource) -> None:
        self._broker = broker
        self._book = WaitBook(broker.cluster)
        self._more = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        waiter = _FutureWaiter(task_id, asyncio.get_running_loop().create_future())
        wake = self._book.add(waiter)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="runq-redis-waits")
        self._more.set()
        try:
            if wake is not None:
                await self._push(wake)
            await asyncio.wait((waiter.future,), timeout=timeout)
        finally:
            wake = self._book.drop(waiter)  # (cancelled: no wake; the slice's end unwatches)
        if wake is not None:
            await self._push(wake)
        if waiter.done:
            return waiter.answer()
        return waiter.last if waiter.seen else await self._broker.get(task_id)

    async def _push(self, key: str) -> None:
        pipe = self._broker._r.pipeline(transaction=False)
        pipe.rpush(key, 1).pexpire(key, 10000)
        await pipe.execute()

    async def _run(self) -> None:
        try:
            while True:
                self._more.clear()
                plan = self._book.next_round(time.monotonic())
                if plan is None:
                    try:
                        await asyncio.wait_for(self._more.wait(), IDLE)
                    except TimeoutError:
                        return
                    continue
                try:
                    replies, popped = await self._send(plan)
                except Exception as exc:  # the connection failed (or worse): every current wait hears it
                    self._book.fail(unavailable(self._broker.url, exc))
                    continue
                for step, reply in zip(plan.steps, replies, strict=True):
                    self._book.on_step(step, reply)
                self._book.on_pop(popped)
        finally:
            self._task = None

    async def _send(self, plan: Round) -> tuple[list[Any], Any]:
        functions = self._broker._blocking_functions
        client = self._broker._blocking
        replies: list[Any] = []
        if self._broker.cluster:
            for step in plan.steps:
                try:
                    replies.append(await functions.run(step.call))
                except ResponseError as exc:
                    replies.append(exc)
            return replies, (await client.blpop(plan.keys, ceil_ms(plan.block)) if plan.keys else None)
        pipe = client.pipeline(transaction=False)
        for step in plan.steps:
            pipe.execute_command(*await functions.command(step.call))
        if plan.keys:
            pipe.blpop(plan.keys, ceil_ms(plan.block))
        replies = list(await pipe.execute(raise_on_error=False))
        popped = replies.pop() if plan.keys else None
        if isinstance(popped, Exception):
            raise popped
        for i, (step, reply) in enumerate(zip(plan.steps, replies, strict=True)):
            if isinstance(reply, Exception):
                try:
                    replies[i] = await functions.recover(step.call, reply)
                except ResponseError as exc:
                    replies[i] = exc
        return replies, popped

    async def close(self) -> None:
        self._book.fail(_closed(self._broker.url))
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["AsyncWaits", "Round", "Step", "ThreadWaits", "WaitBook", "Waiter", "ceil_ms", "info_of"]
