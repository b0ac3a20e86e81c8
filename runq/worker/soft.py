"""``soft_timeout``: :class:`runq.SoftTimeout` raised inside the running task (SPEC §9).

One mechanism per place a task body runs, each armed around the body alone and only for a
task that has a soft timeout (a task without one costs nothing: no timer, no syscall):

=========================  =====================================================================
where the body runs        how SoftTimeout gets in
=========================  =====================================================================
a process-pool child       ``SIGALRM`` from ``setitimer``: it interrupts even a blocking call
any other thread           an asynchronous exception (``PyThreadState_SetAsyncExc``) from one
                           timer thread: seen at the task's next Python bytecode
a coroutine                its task is cancelled, and the ``CancelledError`` is turned into
                           ``SoftTimeout`` where the coroutine awaits
=========================  =====================================================================

Disarming is part of the body's ``try`` in run.py: an alarm that fires as the body returns is
raised inside that ``try`` (an attempt that reached its soft timeout), never in runq's code
after it, and a pending asynchronous exception is withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import signal
import threading
import time
from collections.abc import Coroutine, Generator, Iterator
from types import FrameType
from typing import Any, Generic, TypeVar

from runq.errors import SoftTimeout

T = TypeVar("T")

_signals = False  # set in a process-pool child, whose main thread runs one task at a time
_alarm_armed = False


def use_signals() -> None:
    """Deliver soft timeouts to this process's main thread by ``SIGALRM`` (a process-pool child:
    the handler is installed once, armed per task)."""
    global _signals
    signal.signal(signal.SIGALRM, _on_alarm)
    _signals = True


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _alarm_armed:  # a late signal, after the body returned, is ignored
        raise SoftTimeout()


@contextlib.contextmanager
def limit(seconds: float) -> Iterator[None]:
    """Raise :class:`SoftTimeout` in this thread if the block is still running after ``seconds``."""
    if _signals and threading.current_thread() is threading.main_thread():
        with _alarm(seconds):
            yield
    else:
        armed = _TIMERS.arm(seconds)
        try:
            yield
        finally:
            armed.disarm()


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    global _alarm_armed
    _alarm_armed = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        _alarm_armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


# -- threads: one timer thread, started on first use ---------------------------------------------

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]
_set_async_exc.restype = ctypes.c_int


class _Armed:
    """One armed body: fired at most once, never after it is disarmed (``lock`` orders the two)."""

    __slots__ = ("done", "fired", "lock", "thread")

    def __init__(self, thread: int) -> None:
        self.thread = thread
        self.lock = threading.Lock()
        self.done = False
        self.fired = False

    def fire(self) -> None:
        with self.lock:
            if not self.done:
                self.fired = True
                _set_async_exc(self.thread, SoftTimeout)

    def disarm(self) -> None:
        with self.lock:
            self.done = True
            if self.fired:  # not raised yet (the body returned first): withdraw it
                _set_async_exc(self.thread, ctypes.py_object())
        _TIMERS.forget()


class _Timers:
    """Deadlines of armed bodies in a heap, served by one daemon thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Armed]] = []
        self._order = itertools.count()
        self._live = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> _Armed:
        armed = _Armed(threading.get_ident())
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), armed))
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="runq-soft-timeouts", daemon=True)
                self._thread.start()
            self._cond.notify()
        return armed

    def forget(self) -> None:
        """One body ended: drop the disarmed entries once they are most of the heap."""
        with self._cond:
            self._live -= 1
            if len(self._heap) > 64 and len(self._heap) > 2 * self._live:
                self._heap = [entry for entry in self._heap if not entry[2].done]
                heapq.heapify(self._heap)

    def _serve(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)[2].fire()


_TIMERS = _Timers()


# -- coroutines ------------------------------------------------------------------------------------


async def within(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    """Await ``coro``; after ``seconds`` its task is cancelled and ``coro`` sees ``SoftTimeout``
    where it awaits. Any other cancellation (a hard timeout, a cancel) passes through as is."""
    task = asyncio.current_task()
    assert task is not None, "within() runs inside a task"
    state = _Interrupt(task)
    handle = asyncio.get_running_loop().call_later(seconds, state.fire)
    try:
        return await _Converting(coro, state)
    finally:
        handle.cancel()


class _Interrupt:
    __slots__ = ("done", "pending", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.pending = False  # cancelled for the soft timeout, not yet turned into SoftTimeout
        self.done = False

    def fire(self) -> None:
        if not self.done:
            self.pending = True
            self.task.cancel()


class _Converting(Generic[T]):
    """Drives ``coro`` step by step as ``await`` would, turning the soft timeout's
    ``CancelledError`` into ``SoftTimeout`` on its way in."""

    def __init__(self, coro: Coroutine[Any, Any, T], state: _Interrupt) -> None:
        self.coro = coro
        self.state = state

    def __await__(self) -> Generator[Any, Any, T]:
        coro, state = self.coro, self.state
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                try:
                    step = coro.send(sent) if thrown is None else coro.throw(thrown)
                except StopIteration as stop:
                    value: T = stop.value
                    return value
                sent, thrown = None, None
                try:
                    sent = yield step
                except GeneratorExit:
                    coro.close()
                    raise
                except asyncio.CancelledError as exc:
                    thrown = exc
                    if state.pending:
                        state.pending = False
                        _uncancel(state.task)
                        thrown = SoftTimeout()
                except BaseException as exc:  # anything else thrown in goes on to the coroutine
                    thrown = exc
        finally:
            state.done = True


def _uncancel(task: asyncio.Task[Any]) -> None:
    """The soft timeout's cancel is consumed here: take it back from the task's count (3.11+),
    so ``asyncio.timeout()`` blocks in the task still tell their own cancellations apart."""
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
