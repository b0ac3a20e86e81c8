"""Handles: a producer's view of one enqueued task, by id.

A handle holds nothing but the id and the app, so it can be rebuilt anywhere
with ``app.handle(task_id)``; every call asks the broker afresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from runq.brokers.feed import snapshot
from runq.errors import BrokerUnavailable, TaskCancelled, TaskFailed, TaskNotFound
from runq.models import Event, Status, TaskInfo

if TYPE_CHECKING:
    from runq.brokers.aio import AsyncBroker
    from runq.brokers.base import Broker
    from runq.settings import Settings


class Connected(Protocol):
    """What a handle needs of its App: the broker, blocking and asyncio (the App is one; this
    module sits below app.py and never imports it)."""

    @property
    def broker(self) -> Broker: ...

    @property
    def settings(self) -> Settings: ...

    async def async_broker(self) -> AsyncBroker: ...


R = TypeVar("R")
_FOREVER_SLICE = 3600.0


class Handle(Generic[R]):
    def __init__(self, app: Connected, task_id: str) -> None:
        self.app = app
        self.id = task_id

    def __repr__(self) -> str:
        return f"<runq.Handle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def info(self) -> TaskInfo | None:
        return self.app.broker.get(self.id)

    def status(self) -> Status:
        info = self.info()
        if info is None:
            raise TaskNotFound(self.id)
        return info.status

    def cancel(self) -> bool:
        return self.app.broker.cancel(self.id)

    def result(self, timeout: float | None = None) -> R:
        """Block until the task is final and return its value.

        Raises ``TaskFailed`` (with the remote error), ``TaskCancelled``,
        ``TaskNotFound``, or ``TimeoutError`` when ``timeout`` seconds pass first.
        """
        waiting = self._waiting(timeout)
        remaining = next(waiting)
        cut = _Cut(self.app.settings.connect_timeout)
        while True:
            try:
                info = self.app.broker.wait(self.id, remaining)
            except BrokerUnavailable as exc:
                time.sleep(cut.pause(exc))
                continue
            cut.mended()
            try:
                remaining = waiting.send(info)
            except StopIteration as done:
                return cast(R, done.value)

    def _waiting(self, timeout: float | None) -> Generator[float, TaskInfo | None, Any]:
        """The waiting loop of ``result()`` and ``aresult()`` without its I/O: yields how long
        the next broker wait may block, is sent what it read, returns the value or raises."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = _FOREVER_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            info = yield remaining
            if info is None:
                raise TaskNotFound(self.id)
            if info.status.final:
                return result_of(info)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {self.id} is still {info.status.value} after {timeout}s")

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """The task's status now, then each change of its status or progress, in order, as
        :class:`runq.Event` values; ends after the final status.

        Woken by the broker (Redis pub/sub, PostgreSQL ``LISTEN``, the memory broker's
        condition; SQLite: a short poll of its change counter). Raises ``TaskNotFound`` for
        an unknown (or purged) task and ``TimeoutError`` when ``timeout`` seconds pass before
        the end. Closing the iterator (``break``) stops following at once.
        """
        feed = self.app.broker.follow(self.id)
        try:
            if feed.first is None:
                raise TaskNotFound(self.id)
            yield snapshot(feed.first)
            if feed.first.status.final:
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                for event in feed.next(_left(deadline)):
                    yield event
                    if event.status.final:
                        return
                _check(self.id, deadline, timeout)
        finally:
            feed.close()

    # -- the same, for asyncio code: never blocks the event loop (runq/brokers/aio.py) --------

    async def aevents(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """``events()`` for asyncio code. On Redis the streams of one event loop share one
        connection (pub/sub), however many are open."""
        feed = await (await self.app.async_broker()).follow(self.id)
        try:
            if feed.first is None:
                raise TaskNotFound(self.id)
            yield snapshot(feed.first)
            if feed.first.status.final:
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                for event in await feed.next(_left(deadline)):
                    yield event
                    if event.status.final:
                        return
                _check(self.id, deadline, timeout)
        finally:
            await feed.aclose()

    async def ainfo(self) -> TaskInfo | None:
        return await (await self.app.async_broker()).get(self.id)

    async def astatus(self) -> Status:
        info = await self.ainfo()
        if info is None:
            raise TaskNotFound(self.id)
        return info.status

    async def acancel(self) -> bool:
        return await (await self.app.async_broker()).cancel(self.id)

    async def aresult(self, timeout: float | None = None) -> R:
        """``result()`` for asyncio code, raising as it does; on Redis every ``aresult()`` of
        the loop shares one connection blocked on their tasks' notifications, never polling.
        Cancelling it is safe."""
        broker = await self.app.async_broker()
        waiting = self._waiting(timeout)
        remaining = next(waiting)
        cut = _Cut(self.app.settings.connect_timeout)
        while True:
            try:
                info = await broker.wait(self.id, remaining)
            except BrokerUnavailable as exc:
                await asyncio.sleep(cut.pause(exc))
                continue
            cut.mended()
            try:
                remaining = waiting.send(info)
            except StopIteration as done:
                return cast(R, done.value)


class _Cut:
    """A wait whose connection broke is simply waited again: it only reads, so that is safe,
    and the broker may well be up (a cut connection, a failover). Only when the broker stays
    unreachable for ``connect_timeout`` does the error reach the caller (SPEC §3, §8)."""

    def __init__(self, patience: float) -> None:
        self.patience = patience
        self.since: float | None = None
        self.next_pause = 0.0

    def pause(self, error: BrokerUnavailable) -> float:
        """How long to pause before waiting again; raises ``error`` once patience ran out."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since >= self.patience:
            raise error
        pause, self.next_pause = self.next_pause, min(1.0, max(0.05, 2 * self.next_pause))
        return pause

    def mended(self) -> None:
        self.since, self.next_pause = None, 0.0


def _left(deadline: float | None) -> float:
    return _FOREVER_SLICE if deadline is None else max(0.0, deadline - time.monotonic())


def _check(task_id: str, deadline: float | None, timeout: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"task {task_id} did not end within {timeout}s")


def result_of(info: TaskInfo) -> Any:
    """The value of a finished task, raising as ``Handle.result`` does."""
    if info.status is Status.FAILED:
        raise TaskFailed(info.id, info.error)
    if info.status is Status.CANCELLED:
        raise TaskCancelled(info.id, (info.error or {}).get("message"))
    return info.result


class GroupHandle:
    """The handles of a group's members, in member order (``runq.group(...).delay()``)."""

    def __init__(self, app: Connected, handles: list[Handle[Any]]) -> None:
        self.app = app
        self.handles = handles

    def __repr__(self) -> str:
        return f"<runq.GroupHandle of {len(self.handles)}>"

    def __len__(self) -> int:
        return len(self.handles)

    @property
    def ids(self) -> list[str]:
        return [handle.id for handle in self.handles]

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in member order; ``timeout`` bounds the whole wait.

        Raises as ``Handle.result`` does for the first member that failed or was cancelled.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        return [
            handle.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
            for handle in self.handles
        ]

    async def aresults(self, timeout: float | None = None) -> list[Any]:
        """``results()`` for asyncio code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [
            await handle.aresult(None if deadline is None else max(0.0, deadline - time.monotonic()))
            for handle in self.handles
        ]

    def cancel(self) -> int:
        """Cancel the members not final yet; how many were cancelled."""
        return sum(handle.cancel() for handle in self.handles)


def summarise(members: Iterable[tuple[str, Status]]) -> dict[str, list[str]]:
    """Members' ids by how they ended, in member order: ``{"succeeded": [...], "failed": [...],
    "cancelled": [...]}``, a batch's summary (on_complete's argument); members not final yet
    are listed under ``"unfinished"``, a key only present while there are some."""
    summary: dict[str, list[str]] = {"succeeded": [], "failed": [], "cancelled": []}
    for task_id, status in members:
        summary.setdefault(status.value if status.final else "unfinished", []).append(task_id)
    return summary


class BatchHandle:
    """A batch's members and callbacks (``runq.batch(...).delay()``).

    ``id`` is the batch's summary step: ``app.handle(id).result()`` is what ``on_complete`` is
    given. ``on_complete``, ``on_success`` and ``on_failure`` are the callbacks' handles (``None``
    when not given); the one of ``on_success`` / ``on_failure`` that does not apply ends ``cancelled``.
    """

    def __init__(
        self,
        app: Connected,
        task_id: str,
        members: list[Handle[Any]],
        on_complete: Handle[Any] | None = None,
        on_success: Handle[Any] | None = None,
        on_failure: Handle[Any] | None = None,
    ) -> None:
        self.app = app
        self.id = task_id
        self.members = GroupHandle(app, members)
        self.on_complete, self.on_success, self.on_failure = on_complete, on_success, on_failure

    def __repr__(self) -> str:
        return f"<runq.BatchHandle {self.id} of {len(self.members)}>"

    def __len__(self) -> int:
        return len(self.members)

    @property
    def ids(self) -> list[str]:
        """The members' ids, in member order."""
        return self.members.ids

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in member order (what ``on_success`` is given); raises as
        ``Handle.result`` does for the first member that failed or was cancelled."""
        return self.members.results(timeout)

    async def aresults(self, timeout: float | None = None) -> list[Any]:
        """``results()`` for asyncio code."""
        return await self.members.aresults(timeout)

    def status(self) -> dict[str, list[str]]:
        """The members' ids by how they ended, now: once every member is final, exactly what
        ``on_complete`` is given; before, the members not final yet are under ``"unfinished"``.
        Raises ``TaskNotFound`` for a member gone (purged, or past its ``result_ttl``)."""
        return summarise((handle.id, handle.status()) for handle in self.members.handles)

    async def astatus(self) -> dict[str, list[str]]:
        """``status()`` for asyncio code."""
        return summarise([(handle.id, await handle.astatus()) for handle in self.members.handles])

    def summary(self, timeout: float | None = None) -> dict[str, list[str]]:
        """Wait until every member is final and the summary step ran; its summary (as
        ``on_complete`` gets it). Raises as ``Handle.result`` does."""
        return cast("dict[str, list[str]]", Handle(self.app, self.id).result(timeout))

    def cancel(self) -> int:
        """Cancel the members not final yet; how many were cancelled. The batch then completes:
        ``on_complete`` and ``on_failure`` run, with those members under ``"cancelled"``."""
        return self.members.cancel()
