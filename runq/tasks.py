"""Tasks, their options and signatures.

Options are validated when they are given (at decoration or at ``.options()``),
so a typo fails at the call site rather than in a worker hours later.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar

from runq import options
from runq.context import TaskContext
from runq.models import queue_of
from runq.observe.middleware import TaskOutcome
from runq.options import parse_rate_limit

if TYPE_CHECKING:
    from runq.brokers.aio import AsyncBroker
    from runq.brokers.base import Broker
    from runq.handles import Handle
    from runq.models import Message
    from runq.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Options:
    """Per-task settings; ``None`` means "not set here" so layers can be merged."""

    queue: str | None = None
    priority: int | None = None
    delay: float | None = None
    eta: datetime | None = None
    key: str | None = None
    retries: int | None = None
    backoff: float | None = None
    backoff_max: float | None = None
    jitter: bool | None = None
    timeout: float | None = None
    soft_timeout: float | None = None
    rate_limit: str | None = None
    result_ttl: float | None = None
    after: tuple[str, ...] | None = None
    # Flow control (SPEC §9)
    expires: float | datetime | None = None
    debounce: float | None = None
    concurrency: options.Limit | None = None

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Options:
        """Validate user-given options; ``TypeError`` for unknown names, ``ValueError`` for bad values."""
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        clean = dict(values)
        for name in ("delay", "expires", "debounce"):
            if isinstance(clean.get(name), timedelta):
                clean[name] = clean[name].total_seconds()
        if clean.get("concurrency") is not None:
            clean["concurrency"] = options.check_concurrency(clean["concurrency"])
        if "after" in clean and clean["after"] is not None:
            clean["after"] = tuple(getattr(h, "id", h) for h in clean["after"])
        built = cls(**clean)
        built.validate()
        return built

    def validate(self) -> None:
        """Each set field against runq.options, the rules the CLI and the HTTP API apply too."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None and spec.name in _CHECKS:
                _CHECKS[spec.name](value)
        if self.delay is not None and self.eta is not None:
            raise ValueError("give delay or eta, not both")
        if self.soft_timeout is not None:
            options.check_soft_timeout(self.soft_timeout, self.timeout)
        for parent in self.after or ():
            if not isinstance(parent, str):
                raise TypeError(f"after takes handles or task ids, got {type(parent).__name__}")
            queue_of(parent)

    def merge(self, override: Options) -> Options:
        """These options with every field that ``override`` sets replaced."""
        if override is NO_OPTIONS:
            return self
        changes = {spec.name: getattr(override, spec.name) for spec in fields(override)}
        changes = {name: value for name, value in changes.items() if value is not None}
        if override.eta is not None:
            changes["delay"] = None
        if override.delay is not None:
            changes["eta"] = None
        return replace(self, **changes)


NO_OPTIONS = Options()
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "queue": options.check_queue,
    "priority": options.check_priority,
    "delay": options.check_delay,
    "eta": options.check_eta,
    "key": options.check_key,
    "retries": options.check_retries,
    "backoff": lambda value: options.check_seconds("backoff", value),
    "backoff_max": lambda value: options.check_seconds("backoff_max", value),
    "jitter": options.check_jitter,
    "timeout": lambda value: options.check_seconds("timeout", value, zero=False),
    "soft_timeout": options.check_soft_timeout,
    "result_ttl": lambda value: options.check_seconds("result_ttl", value, zero=False),
    "rate_limit": options.parse_rate_limit,
    "expires": options.check_expires,
    "debounce": options.check_debounce,
}


def check_breaker(breaker: tuple[int, float] | None) -> tuple[int, float] | None:
    """``breaker=(failures, seconds)``: open after that many failed attempts in a row, for that long."""
    if breaker is None:
        return None
    try:
        failures, seconds = breaker
    except (TypeError, ValueError):
        raise TypeError(f"breaker must be (failures, seconds), got {breaker!r}") from None
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 1:
        raise ValueError(f"breaker failures must be an int >= 1, got {failures!r}")
    return failures, options.check_seconds("breaker seconds", seconds, zero=False)


@dataclass(frozen=True)
class Signature:
    """A task call written down but not sent: ``add.s(1, 2)``; for batches and workflows."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    opts: Options = field(default_factory=Options)
    app: Producer | None = field(default=None, compare=False, repr=False)

    def options(self, **options: Any) -> Signature:
        return replace(self, opts=self.opts.merge(Options.build(options)))

    def delay(self) -> Handle[Any]:
        if self.app is None:
            raise RuntimeError(f"signature of {self.name!r} is not bound to an App")
        return self.app.send(self.name, self.args, self.kwargs, self.opts)

    async def adelay(self) -> Handle[Any]:
        """``delay()`` for asyncio code: never blocks the event loop."""
        if self.app is None:
            raise RuntimeError(f"signature of {self.name!r} is not bound to an App")
        return await self.app.asend(self.name, self.args, self.kwargs, self.opts)


Hook = Callable[[TaskContext, TaskOutcome], Any]


class Producer(Protocol):
    """What tasks, signatures and workflows need of their App (the App is one; these modules
    sit below app.py and never import it)."""

    @property
    def broker(self) -> Broker: ...

    @property
    def settings(self) -> Settings: ...

    async def async_broker(self) -> AsyncBroker: ...

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
    ) -> Message: ...

    def send(
        self, name: str, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None, opts: Options
    ) -> Handle[Any]: ...

    async def asend(
        self, name: str, args: Iterable[Any] | None, kwargs: Mapping[str, Any] | None, opts: Options
    ) -> Handle[Any]: ...

    def enqueue_many(self, signatures: Iterable[Signature]) -> list[Handle[Any]]: ...


@dataclass(frozen=True)
class Hooks:
    """A task's own hooks, called in the worker once its outcome is final (SPEC §10)."""

    on_success: Hook | None = None
    on_failure: Hook | None = None

    def __post_init__(self) -> None:
        for name in ("on_success", "on_failure"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable (task, outcome), got {hook!r}")


class Task(Generic[P, R]):
    """A function registered with an App. Calling it runs it here; ``.delay()`` queues it."""

    def __init__(
        self,
        app: Producer,
        fn: Callable[P, R],
        name: str,
        defaults: Options,
        retry_for: tuple[type[BaseException], ...],
        breaker: tuple[int, float] | None = None,
        hooks: Hooks = Hooks(),
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.defaults = defaults
        self.retry_for = retry_for
        self.hooks = hooks
        # Flow control, per task name and shared through the broker; parsed once here so a
        # worker's start of a task without either costs one attribute check.
        self.rate = parse_rate_limit(defaults.rate_limit) if defaults.rate_limit else None
        self.breaker = check_breaker(breaker)
        self.gated = self.rate is not None or self.breaker is not None
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = _signature(fn)
        self._arity = _plain_arity(self.signature)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<runq.Task {self.name}>"

    def check_call(self, args: list[Any], kwargs: dict[str, Any], leading: int = 0) -> None:
        """``TypeError`` naming the task when the call cannot bind to its signature (SPEC §8).

        ``leading`` arguments come later, in front of ``args``: a workflow step's parent result.
        """
        if self.signature is None or (not kwargs and leading + len(args) == self._arity):
            return  # the common call (every argument positional, none optional): no bind() needed
        try:
            self.signature.bind(*([None] * leading), *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r}{self.signature} cannot take these arguments: {exc}") from None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        return self.app.send(self.name, args, kwargs, NO_OPTIONS)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        """``delay()`` for asyncio code: validated as ``delay()`` is, sent without blocking the loop."""
        return await self.app.asend(self.name, args, kwargs, NO_OPTIONS)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.name, args, kwargs, NO_OPTIONS, self.app)

    def options(self, **options: Any) -> BoundTask[P, R]:
        return BoundTask(self, Options.build(options))


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature calls are checked against, or ``None`` (a builtin without one: not checked)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _plain_arity(signature: inspect.Signature | None) -> int:
    """How many arguments a function of only plain required parameters takes; -1 otherwise."""
    if signature is None:
        return -1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = signature.parameters.values()
    plain = all(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)
    return len(signature.parameters) if plain else -1


class BoundTask(Generic[P, R]):
    """A task with per-call options: ``add.options(priority=9).delay(2, 3)``."""

    def __init__(self, task: Task[P, R], opts: Options) -> None:
        self.task = task
        self.opts = opts

    def options(self, **options: Any) -> BoundTask[P, R]:
        return BoundTask(self.task, self.opts.merge(Options.build(options)))

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        return self.task.app.send(self.task.name, args, kwargs, self.opts)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        return await self.task.app.asend(self.task.name, args, kwargs, self.opts)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.task.name, args, kwargs, self.opts, self.task.app)
