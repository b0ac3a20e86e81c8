"""The App: the one object a user holds. It owns the settings, the broker and the task registry."""

from __future__ import annotations

import asyncio
import builtins
import importlib
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from runq import options as rules
from runq import signing
from runq.brokers import Broker, asynchronous, connect
from runq.brokers.aio import AsyncBroker, ThreadedBroker
from runq.handles import Handle
from runq.logs import mask_url
from runq.models import DrainResult, Message, Stats, Status, TaskInfo, WorkerInfo, new_task_id, queue_of
from runq.observe import Middleware, Observers, tracing
from runq.settings import Settings
from runq.tasks import NO_OPTIONS, Hook, Hooks, Options, Signature, Task, check_breaker
from runq.workflow import STEPS

if TYPE_CHECKING:
    from runq.schedule import Periodic

P = ParamSpec("P")
R = TypeVar("R")


class App:
    """``runq.App(url)``: URL → broker, the tasks it knows, and the producer/inspection API.

    The broker connects lazily, so importing a module that builds an App costs nothing
    and a worker process can import the same module its producers use.
    """

    def __init__(
        self, url: str | None = None, *, settings: Settings | None = None, signing_keys: Sequence[str] | None = None
    ) -> None:
        """``signing_keys``: sign every message with the first, and have this App's workers
        run only messages one of them verifies (runq/signing.py); else ``RUNQ_SIGNING_KEYS``."""
        if url is not None and settings is not None and settings.url != url:
            given = f"url={mask_url(url)!r} and settings with url={mask_url(settings.url)!r}"
            raise ValueError(f"App got {given}: give one")
        keys = None if signing_keys is None else signing.check_keys(signing_keys)
        self._settings = (
            settings.with_(signing_keys=keys) if settings else Settings.from_env(url=url, signing_keys=keys)
        )
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: list[Periodic] = []  # @app.periodic, run by `runq beat` / `worker --beat`
        self._broker: Broker | None = None
        self._lock = threading.Lock()
        # asyncio producers: one adapter per event loop (redis.asyncio connections belong to one)
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncBroker] = weakref.WeakKeyDictionary()
        # Middleware (SPEC §10): runq's own tracing first, when the otel extra is installed.
        self._observers = Observers([tracing.Tracing(self.tasks)] if tracing.ENABLED else [])

    def __repr__(self) -> str:
        return f"<runq.App {mask_url(self.settings.url)}>"

    @property
    def settings(self) -> Settings:
        """The one configuration of this App (``App(url)`` ← ``RUNQ_*`` ← defaults); read-only."""
        return self._settings

    def configure(self, settings: Settings) -> None:
        """Adopt the settings a worker, ``runq beat`` or the dashboard resolved for this App.

        They decide the broker tasks enqueue into from inside a task, so they must be set
        before the App connects: an App already connected to another URL refuses them
        rather than silently keeping its old broker.
        """
        with self._lock:
            if self._broker is not None and settings.url != self._settings.url:
                raise RuntimeError(
                    f"this App is already connected to {mask_url(self._settings.url)}; "
                    f"it cannot switch to {mask_url(settings.url)} (configure it before its first use)"
                )
            self._settings = settings

    def add_middleware(self, middleware: Middleware) -> None:
        """Watch every task of this App (``runq.Middleware``). Register it where the App is
        built, so workers and their process-pool children, which import that module, have it."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"add_middleware takes a runq.Middleware, got {type(middleware).__name__}")
        self._observers = Observers([*self._observers.middleware, middleware])

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        return self._observers.middleware

    @property
    def observers(self) -> Observers:
        """The middleware, fanned out per hook (what the worker and the runner call)."""
        return self._observers

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = connect(self.settings.url, self.settings.connect_timeout)
        return self._broker

    def _connect(self) -> Broker:
        return self.broker

    def close(self) -> None:
        """Close the broker. In asyncio code use ``await app.aclose()``, which closes this
        loop's async connections too (they can only be closed from their own loop)."""
        with self._lock:
            for adapter in list(self._async.values()):
                if isinstance(adapter, ThreadedBroker):  # no thread may still use the broker we close
                    adapter.stop_threads()
            self._async.clear()
            if self._broker is not None:
                self._broker.close()
                self._broker = None

    async def async_broker(self) -> AsyncBroker:
        """This event loop's async view of the broker (brokers/aio.py); connects without blocking the loop."""
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is not None and not found.closed:
            return found
        # Connecting may do I/O (a cluster's slots, SQLite's schema): never on the loop.
        broker: Broker = self._broker if self._broker is not None else await asyncio.to_thread(self._connect)
        found = self._async.get(loop)
        if found is not None and not found.closed:  # another coroutine got there while we connected
            return found
        made = self._async[loop] = asynchronous(broker, self.settings.connect_timeout)
        await made.close_with_loop()
        return made

    async def aclose(self) -> None:
        """``close()`` for asyncio code (e.g. a FastAPI lifespan): this loop's connections, then the broker."""
        found = self._async.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found.aclose()
        await asyncio.to_thread(self.close)

    # -- registering ------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        retry_for: Iterable[type[BaseException]] = (),
        breaker: tuple[int, float] | None = None,
        on_success: Hook | None = None,
        on_failure: Hook | None = None,
        **options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        retry_for: Iterable[type[BaseException]] = (),
        breaker: tuple[int, float] | None = None,
        on_success: Hook | None = None,
        on_failure: Hook | None = None,
        **options: Any,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function (sync or ``async def``) as a task: ``@app.task`` or ``@app.task(...)``.

        ``retry_for`` limits retries to those exception types; anything else fails at
        once. Without it every exception is retried (``retries`` times).
        ``breaker=(failures, seconds)``: after that many failed attempts in a row (retried
        or final), new runs of the task are held for that long, then one probe runs.
        ``on_success(task, outcome)`` / ``on_failure(task, outcome)`` run in the worker once the
        task's outcome is final (not on a retry); one that raises is logged, nothing more.
        """
        defaults = Options.build(options)
        hooks = Hooks(on_success, on_failure)
        check_breaker(breaker)
        retry_types = tuple(retry_for)
        for kind in retry_types:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise TypeError(f"retry_for must hold exception classes, got {kind!r}")

        def register(func: Callable[P, R]) -> Task[P, R]:
            task_name = rules.check_task_name(name or default_task_name(func))
            if task_name in self.tasks and self.tasks[task_name].fn is not func:
                raise ValueError(f"a different task is already registered as {task_name!r}")
            task = Task(self, func, task_name, defaults, retry_types, breaker, hooks)
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | None = None,
        tz: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Callable[[Callable[..., R]], Task[..., R]]:
        """Register a task enqueued with ``args`` and ``kwargs`` at every tick of a schedule.

        ``cron="0 9 * * *"`` read in the IANA zone ``tz`` (default UTC; across a DST change a
        repeated time fires once, a skipped one at the end of the gap), or ``every=seconds``;
        the other keywords are task options. Ticks are fired by ``runq beat APP`` or ``runq
        worker APP --beat``, once per tick however many of them run (see runq/schedule.py).
        """
        from runq.schedule import Periodic

        schedule = Periodic("check", cron=cron, every=every, tz=tz, args=args, kwargs=kwargs or {})  # fails here

        def register(func: Callable[..., R]) -> Task[..., R]:
            known = set(self.tasks)
            task = self.task(name=name, **options)(func)
            try:
                task.check_call(list(schedule.args), dict(schedule.kwargs))
            except TypeError:
                if task.name not in known:
                    del self.tasks[task.name]
                raise
            self.schedules.append(replace(schedule, name=task.name))
            return task

        return register

    # -- producing --------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Handle[Any]:
        """Enqueue a task by name; the task need not be importable here."""
        return self.send(name, args, kwargs, Options.build(options) if options else NO_OPTIONS)

    def send(
        self, name: str, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None, opts: Options
    ) -> Handle[Any]:
        """Enqueue one call with already-validated options (``delay()`` and ``enqueue()`` end here)."""
        message = self.message(name, args, kwargs, opts)
        [task_id] = self.broker.enqueue([message], self.settings.key_ttl)
        return Handle(self, task_id)

    def enqueue_many(self, signatures: Iterable[Signature]) -> list[Handle[Any]]:
        """Enqueue a batch in one broker round trip; all or nothing."""
        messages = self._messages(signatures)
        if not messages:
            return []
        return [Handle(self, task_id) for task_id in self.broker.enqueue(messages, self.settings.key_ttl)]

    def _messages(self, signatures: Iterable[Signature]) -> builtins.list[Message]:
        messages = []
        for signature in signatures:
            if not isinstance(signature, Signature):
                raise TypeError(f"enqueue_many takes signatures (task.s(...)), got {type(signature).__name__}")
            messages.append(self.message(signature.name, signature.args, signature.kwargs, signature.opts))
        return messages

    # -- producing from asyncio: the same messages, sent without blocking the loop ---------

    async def aenqueue(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Handle[Any]:
        """``enqueue()`` for asyncio code."""
        return await self.asend(name, args, kwargs, Options.build(options) if options else NO_OPTIONS)

    async def asend(
        self, name: str, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None, opts: Options
    ) -> Handle[Any]:
        """``send()`` for asyncio code: validated here, before any I/O, exactly as ``send()`` does."""
        message = self.message(name, args, kwargs, opts)
        return Handle(self, await (await self.async_broker()).enqueue_one(message, self.settings.key_ttl))

    async def aenqueue_many(self, signatures: Iterable[Signature]) -> builtins.list[Handle[Any]]:
        """``enqueue_many()`` for asyncio code: one round trip, all or nothing."""
        messages = self._messages(signatures)
        if not messages:
            return []
        ids = await (await self.async_broker()).enqueue(messages, self.settings.key_ttl)
        return [Handle(self, task_id) for task_id in ids]

    def message(
        self,
        name: str,
        args: Iterable[Any] | None,
        kwargs: Mapping[str, Any] | None,
        call: Options,
        *,
        leading: int = 0,
        pass_results: Literal["first", "list"] | None = None,
        after_final: bool = False,
    ) -> Message:
        """Validate one call against the task's defaults and the settings; build its Message.

        By name, a task this App registered brings its own options (queue, priority...)
        and its signature, which the arguments must fit (``leading`` more come in front
        later: a workflow step's parent result). An App with tasks registered refuses a
        name it does not know, suggesting the close ones; an App with none cannot know,
        and sends it for a worker to decide (runq/options.py has every rule).
        """
        if call.rate_limit is not None:
            raise TypeError("rate_limit is per task name, shared by every call: set it with @app.task(rate_limit=...)")
        task = self._task_named(name)
        opts = (task.defaults if task else NO_OPTIONS).merge(call)
        args_list = list(args) if args else []
        kwargs_dict = dict(kwargs) if kwargs else {}
        for key in kwargs_dict:
            if not isinstance(key, str):
                raise TypeError(f"keyword argument names must be strings, got {key!r}")
        if task is not None:
            task.check_call(args_list, kwargs_dict, leading)
        if opts.soft_timeout is not None:  # against the timeout the call and the task's defaults make together
            rules.check_soft_timeout(opts.soft_timeout, opts.timeout)
        delay, flow = _flow(name, opts, _delay_of(opts), args_list, kwargs_dict, task, leading)
        queue = opts.queue or "default"
        result_ttl = opts.result_ttl or self.settings.result_ttl
        if opts.key is not None and opts.result_ttl is None:  # a key answers only while its task is kept
            result_ttl = max(result_ttl, self.settings.key_ttl)
        message = Message(
            id=new_task_id(queue),
            name=name,
            queue=queue,
            args=args_list,
            kwargs=kwargs_dict,
            priority=opts.priority or 0,
            delay=delay,
            key=opts.key,
            retries=opts.retries,
            backoff=opts.backoff,
            backoff_max=opts.backoff_max,
            jitter=opts.jitter,
            timeout=opts.timeout,
            result_ttl=result_ttl,
            soft_timeout=opts.soft_timeout,
            after=opts.after or (),
            pass_results=pass_results,
            after_final=after_final,
            sealer=signing.signer(self.settings.signing_keys),
            **flow,
        )
        return self._checked_size(self._observers.enqueue(message))

    def _task_named(self, name: str) -> Task[Any, Any] | None:
        """The registered task of that name; ``None`` for a name this App may send unregistered
        (it registered none, or the name is a collector or batch summary step, every worker's)."""
        task = self.tasks.get(name) if isinstance(name, str) else None
        if task is None:  # a registered name was checked when it was registered
            rules.check_task_name(name)
            if self.tasks and name not in STEPS:  # a collector or batch summary step is every worker's
                raise ValueError(rules.unknown_name(name, self.tasks, "in this App"))
        return task

    def _checked_size(self, message: Message) -> Message:
        """The message as stored, refused when it cannot be encoded or is over ``max_payload``
        (checked after middleware, which may have added to it)."""
        try:
            size = len(message.payload.encode())
        except (TypeError, ValueError) as exc:
            raise TypeError(f"task arguments must be JSON-serialisable: {exc}") from None
        if size > self.settings.max_payload:
            raise ValueError(f"task payload is {size} bytes, over max_payload ({self.settings.max_payload} bytes)")
        return message

    # -- inspecting and steering ------------------------------------------------

    def handle(self, task_id: str) -> Handle[Any]:
        queue_of(task_id)
        return Handle(self, task_id)

    def info(self, task_id: str) -> TaskInfo | None:
        return self.broker.get(task_id)

    def cancel(self, task_id: str) -> bool:
        return self.broker.cancel(task_id)

    async def ainfo(self, task_id: str) -> TaskInfo | None:
        return await (await self.async_broker()).get(task_id)

    async def acancel(self, task_id: str) -> bool:
        return await (await self.async_broker()).cancel(task_id)

    def retry(self, task_id: str) -> bool:
        """Put a failed (or cancelled) task back to pending with its attempts reset."""
        return self.broker.retry(task_id)

    def list(self, status: Status | str | None = None, queue: str | None = None, limit: int = 20) -> list[TaskInfo]:
        return self.broker.list(_status(status), None if queue is None else rules.check_queue(queue), limit)

    def purge(self, status: Status | str | None = Status.FAILED, queue: str | None = None) -> int:
        """Delete finished tasks in ``status`` (default the dead-letter set); ``None``: every
        final task. Any other status is a ``ValueError``: a task that may still run is never purged."""
        chosen = rules.check_purge_status(status)
        return self.broker.purge(chosen, None if queue is None else rules.check_queue(queue))

    def stats(self) -> Stats:
        return self.broker.stats()

    def workers(self) -> builtins.list[WorkerInfo]:
        return self.broker.workers()

    # -- inspecting from asyncio: a web app's status pages, without blocking the loop -----

    async def alist(
        self, status: Status | str | None = None, queue: str | None = None, limit: int = 20
    ) -> builtins.list[TaskInfo]:
        """``list()`` for asyncio code: the same arguments, checked before any I/O."""
        chosen, queue = _status(status), None if queue is None else rules.check_queue(queue)
        return await (await self.async_broker()).list(chosen, queue, limit)

    async def astats(self) -> Stats:
        """``stats()`` for asyncio code."""
        return await (await self.async_broker()).stats()

    async def aworkers(self) -> builtins.list[WorkerInfo]:
        """``workers()`` for asyncio code."""
        return await (await self.async_broker()).workers()

    # -- queues (SPEC §9) -----------------------------------------------------------

    def pause(self, queue: str) -> bool:
        """Stop workers starting tasks of ``queue`` (within a second); enqueue goes on and running
        tasks finish. Kept in the broker, so every worker and producer sees it. ``False`` when
        it was paused already."""
        return self.broker.pause(rules.check_queue(queue), True)

    def resume(self, queue: str) -> bool:
        """Let workers start tasks of ``queue`` again (idle ones are woken); ``False`` when it was not paused."""
        return self.broker.pause(rules.check_queue(queue), False)

    def paused(self) -> set[str]:
        """The queues paused now."""
        return self.broker.paused()

    # -- testing (SPEC §12) --------------------------------------------------------

    def drain(self, queues: Iterable[str] | str | None = None, scheduled: bool = False) -> DrainResult:
        """Run every ready task of ``queues`` (default: every queue) in this thread, until none
        is ready, and say what happened: sync and ``async def`` tasks, retries, workflows and
        ``after`` alike, with the worker's own run, retry policy and middleware hooks.

        ``scheduled=True`` also runs delayed tasks and retry back-offs at once, in eta order,
        by moving the broker's clock forward (``memory://`` only). Meant for tests on
        ``runq.App("memory://")``; on another broker it competes with its workers.
        """
        from runq.worker.drain import drain

        chosen = None if queues is None else [queues] if isinstance(queues, str) else list(queues)
        return drain(self, chosen, scheduled)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _delay_of(opts: Options) -> float:
    """Seconds from now until the task may start: ``eta`` read now, else ``delay``."""
    if opts.eta is not None:
        return rules.check_delay(max(0.0, (rules.check_eta(opts.eta) - _now()).total_seconds()))
    return opts.delay or 0.0


def _flow(
    name: str,
    opts: Options,
    delay: float,
    args: builtins.list[Any],
    kwargs: dict[str, Any],
    task: Task[Any, Any] | None,
    leading: int,
) -> tuple[float, dict[str, Any]]:
    """The eta and the Message fields of the flow options (SPEC §9; the rules: runq/options.py).
    A debounced task's eta is its debounce; ``expires`` is read now, as seconds from now."""
    flow: dict[str, Any] = {}
    if opts.expires is None and opts.debounce is None and opts.concurrency is None:
        return delay, flow
    expires = None if opts.expires is None else rules.check_expires(opts.expires)
    given = opts.delay is not None or opts.eta is not None
    rules.check_flow(key=opts.key, delay=given, after=bool(opts.after), expires=expires, debounce=opts.debounce)
    if opts.debounce is not None:
        delay = flow["debounce"] = opts.debounce
    if expires is not None:
        flow["expires"] = expires
    if opts.concurrency is not None:
        signature = task.signature if task is not None else None
        flow["slot"] = rules.limit_slot(name, opts.concurrency, args, kwargs, signature, leading)
        flow["concurrency"] = opts.concurrency.runs
    return delay, flow


def _status(status: Status | str | None) -> Status | None:
    if status is None or isinstance(status, Status):
        return status
    try:
        return Status(status)
    except ValueError:
        valid = ", ".join(s.value for s in Status)
        raise ValueError(f"unknown status {status!r}; valid: {valid}") from None


def default_task_name(fn: Callable[..., Any]) -> str:
    """``module.qualname``; a script run as ``__main__`` uses its importable name instead."""
    module = fn.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif main is not None and getattr(main, "__file__", None):
            module = Path(str(main.__file__)).stem
    return f"{module}.{fn.__qualname__}"


def load_app(path: str) -> App:
    """Import ``module:attribute`` (the current directory is importable, as for ``python -m``)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"APP must look like 'module:attribute', got {path!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(app, App):
        raise TypeError(f"{path} is a {type(app).__name__}, not a runq.App")
    return app
