"""Periodic tasks: ``@app.periodic(cron=..., tz=..., args=..., kwargs=...)`` /
``@app.periodic(every=...)``; the beat that fires them is runq/worker/beat.py.

Any number of beat processes may run (``runq beat APP``, or workers started with
``--beat``): each one computes the same ticks from the schedule, sleeps until the next
one, and asks the broker for it (:meth:`Broker.take_tick`); exactly one of them gets
each tick and enqueues the task. So a beat process that dies costs nothing as long as
another runs. Ticks are points in time derived from the schedule alone, never from
when a process started: ``every=30`` ticks at every multiple of 30 s since the epoch,
and a cron expression is read in its IANA zone ``tz`` (default UTC). A tick missed
while no beat process ran is not replayed: a starting beat looks only forward.

Daylight saving time (SPEC §9): a local time that a change repeats fires once, on its
first pass; one that a change skips fires at the first instant after the gap (every
skipped time of a ``*/15`` cron is that one tick).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

MIN_TICK_TTL = 60.0  # a taken tick is remembered at least this long (beats with skewed clocks)
MAX_STEPS = 100_000  # cron matches examined for one tick: far more than a gap ever holds


@dataclass(frozen=True)
class Periodic:
    """One schedule: the task ``name`` is enqueued with ``args`` and ``kwargs`` at every tick."""

    name: str
    cron: str | None = None
    every: float | None = None
    tz: str | None = None  # an IANA zone name for cron; None: UTC
    args: Sequence[Any] = field(default=(), hash=False)  # kept as a tuple
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    _zone: ZoneInfo | None = field(default=None, init=False, repr=False, compare=False, hash=False)
    _digest: str = field(default="", init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("periodic() takes cron=... or every=..., exactly one of them")
        if self.every is not None:
            if not isinstance(self.every, (int, float)) or isinstance(self.every, bool) or not self.every > 0:
                raise ValueError(f"every must be a number of seconds > 0, got {self.every!r}")
            if self.tz is not None:
                raise ValueError("tz applies to cron schedules; every=... ticks on multiples of its period")
        elif not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
            raise ValueError(f"cron must be a cron expression such as '*/5 * * * *', got {self.cron!r}")
        object.__setattr__(self, "_zone", _zone(self.tz))
        object.__setattr__(self, "args", _args(self.args))
        object.__setattr__(self, "kwargs", _kwargs(self.kwargs))
        object.__setattr__(self, "_digest", _digest(self.args, self.kwargs))

    @property
    def schedule(self) -> str:
        """The schedule as people write it: ``0 9 * * * (Europe/Paris)``, ``every 30s``."""
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"{self.cron} ({self.tz or 'UTC'})"

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (seconds since the epoch)."""
        if self.every is not None:
            return float((math.floor(moment / self.every) + 1) * self.every)
        if self._zone is None:
            start = datetime.fromtimestamp(moment, tz=timezone.utc)
            return float(croniter(str(self.cron), start).get_next(float))
        return _next_local(str(self.cron), self._zone, moment)

    def tick_id(self, tick: float) -> str:
        """The same string in every beat process for the same tick (and the same arguments:
        two schedules of one task with other arguments are other ticks)."""
        base = str(round(tick * 1000))
        return f"{base}.{self._digest}" if self._digest else base

    def ttl(self, tick: float) -> float:
        """How long the broker remembers a taken tick: two periods, at least a minute."""
        return max(MIN_TICK_TTL, 2 * (self.next_after(tick) - tick))


def _next_local(cron: str, zone: ZoneInfo, moment: float) -> float:
    """The first tick after ``moment`` of ``cron`` read on ``zone``'s wall clock.

    Local times map to instants in order (a repeated one to its first pass, a skipped one to
    the end of its gap), so the answer is the first match after the wall-clock reading at
    ``moment`` whose instant is after ``moment``: on a repeated hour's second pass, the
    matches it repeats are passed over.
    """
    wall = datetime.fromtimestamp(moment, zone).replace(tzinfo=None, fold=0)
    matches = croniter(cron, wall)
    for _ in range(MAX_STEPS):
        tick = _instant(matches.get_next(datetime), zone)
        if tick > moment:
            return tick
    raise RuntimeError(f"cron {cron!r} in {zone.key} has no tick near {wall.isoformat()}")


def _instant(wall: datetime, zone: ZoneInfo) -> float:
    """The instant a local time fires: its first occurrence; in a gap, the gap's end."""
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    if datetime.fromtimestamp(first, zone).replace(tzinfo=None) == wall:
        return first
    # A skipped time: fold=1 reads it with the offset after the change (an instant before the
    # gap's end), fold=0 with the offset before (after it). The end lies between, on a second.
    low, high = math.floor(wall.replace(tzinfo=zone, fold=1).timestamp()), math.ceil(first)
    after = _offset(high, zone)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _offset(middle, zone) == after else (middle, high)
    return float(high)


def _offset(moment: float, zone: ZoneInfo) -> Any:
    return datetime.fromtimestamp(moment, zone).utcoffset()


def _zone(tz: Any) -> ZoneInfo | None:
    if tz is None:
        return None
    if not isinstance(tz, str):
        raise TypeError(f"tz must be a string naming an IANA time zone, got {type(tz).__name__}")
    if tz == "UTC":
        return None  # the same ticks as without tz, and the fast path
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # unknown, malformed, or a directory of zones
        raise ValueError(f"tz must be an IANA time zone such as 'Europe/Paris', got {tz!r}") from None


def _args(args: Any) -> tuple[Any, ...]:
    if not isinstance(args, Sequence) or isinstance(args, (str, bytes)):
        raise TypeError(f"periodic args must be a list or tuple, got {type(args).__name__}")
    return tuple(args)


def _kwargs(kwargs: Any) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping) or not all(isinstance(key, str) for key in kwargs):
        raise TypeError(f"periodic kwargs must be a dict with string keys, got {kwargs!r}")
    return dict(kwargs)


def _digest(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """A short stable name for the arguments ("" for none: the tick ids of older runq)."""
    if not args and not kwargs:
        return ""
    try:
        text = json.dumps([list(args), kwargs], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"periodic args and kwargs must be JSON-serialisable: {exc}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]
