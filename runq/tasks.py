"""Tasks, their options and signatures.

Options are validated when they are given (at decoration or at ``.options()``),
so a typo fails at the call site rather than in a worker hours later.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from runq.models import check_queue_name, queue_of

if TYPE_CHECKING:
    from runq.app import App
    from runq.handles import Handle

P = ParamSpec("P")
R = TypeVar("R")

PRIORITY_RANGE = range(-100, 101)
RATE_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")


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
    rate_limit: str | None = None
    result_ttl: float | None = None
    after: tuple[str, ...] | None = None

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> Options:
        """Validate user-given options; ``TypeError`` for unknown names, ``ValueError`` for bad values."""
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        clean = dict(values)
        if isinstance(clean.get("delay"), timedelta):
            clean["delay"] = clean["delay"].total_seconds()
        if "after" in clean and clean["after"] is not None:
            clean["after"] = tuple(getattr(h, "id", h) for h in clean["after"])
        options = cls(**clean)
        options.validate()
        return options

    def validate(self) -> None:
        if self.queue is not None:
            check_queue_name(self.queue)
        if self.priority is not None:
            if not isinstance(self.priority, int) or isinstance(self.priority, bool):
                raise TypeError(f"priority must be an int, got {type(self.priority).__name__}")
            if self.priority not in PRIORITY_RANGE:
                raise ValueError(f"priority must be between -100 and 100, got {self.priority}")
        if self.delay is not None:
            _check_number("delay", self.delay)
            if self.delay < 0:
                raise ValueError(f"delay must be >= 0 seconds, got {self.delay}")
        if self.eta is not None:
            if not isinstance(self.eta, datetime):
                raise TypeError(f"eta must be a datetime, got {type(self.eta).__name__}")
            if self.eta.tzinfo is None:
                raise ValueError("eta must be timezone-aware (e.g. datetime.now(timezone.utc))")
        if self.delay is not None and self.eta is not None:
            raise ValueError("give delay or eta, not both")
        if self.key is not None and (not isinstance(self.key, str) or not 0 < len(self.key) <= 512):
            raise ValueError("key must be a non-empty string of at most 512 characters")
        if self.retries is not None and (not isinstance(self.retries, int) or self.retries < 0):
            raise ValueError(f"retries must be an int >= 0, got {self.retries!r}")
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value)
                if value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value}")
        for name in ("timeout", "result_ttl"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value)
                if value <= 0:
                    raise ValueError(f"{name} must be > 0 seconds, got {value}")
        if self.rate_limit is not None:
            parse_rate_limit(self.rate_limit)
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


def _check_number(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")


def parse_rate_limit(text: str) -> tuple[float, float]:
    """``"100/s"`` → (100 tokens, per 1 second); ``ValueError`` for anything else."""
    match = RATE_LIMIT.match(text) if isinstance(text, str) else None
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"rate_limit must look like '10/s', '100/m' or '1000/h', got {text!r}")
    return float(match.group(1)), {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]


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
    _check_number("breaker seconds", seconds)
    if seconds <= 0:
        raise ValueError(f"breaker seconds must be > 0, got {seconds}")
    return failures, float(seconds)


@dataclass(frozen=True)
class Signature:
    """A task call written down but not sent: ``add.s(1, 2)``; for batches and workflows."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    opts: Options = field(default_factory=Options)
    app: App | None = field(default=None, compare=False, repr=False)

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


def retries_on(retry_for: tuple[type[BaseException], ...], error_class: type[BaseException]) -> bool:
    """Whether a task with this ``retry_for`` retries this error: every error when it names none."""
    return not retry_for or issubclass(error_class, retry_for)


class Task(Generic[P, R]):
    """A function registered with an App. Calling it runs it here; ``.delay()`` queues it."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        name: str,
        defaults: Options,
        retry_for: tuple[type[BaseException], ...],
        breaker: tuple[int, float] | None = None,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.defaults = defaults
        self.retry_for = retry_for
        # Flow control, per task name and shared through the broker; parsed once here so a
        # worker's start of a task without either costs one attribute check.
        self.rate = parse_rate_limit(defaults.rate_limit) if defaults.rate_limit else None
        self.breaker = check_breaker(breaker)
        self.gated = self.rate is not None or self.breaker is not None
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<runq.Task {self.name}>"

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        return self.app.send(self.name, args, kwargs, NO_OPTIONS)

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        """``delay()`` for asyncio code: validated as ``delay()`` is, sent without blocking the loop."""
        return await self.app.asend(self.name, args, kwargs, NO_OPTIONS)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.name, args, kwargs, NO_OPTIONS, self.app)

    def options(self, **options: Any) -> BoundTask[P, R]:
        return BoundTask(self, Options.build(options))


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
