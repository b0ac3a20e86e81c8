"""Periodic tasks: ``@app.periodic(cron=...)`` / ``@app.periodic(every=...)``; the beat that
fires them is runq/worker/beat.py.

Any number of beat processes may run (``runq beat APP``, or workers started with
``--beat``): each one computes the same ticks from the schedule, sleeps until the next
one, and asks the broker for it (:meth:`Broker.take_tick`); exactly one of them gets
each tick and enqueues the task. So a beat process that dies costs nothing as long as
another runs. Ticks are points in time derived from the schedule alone, never from
when a process started: ``every=30`` ticks at every multiple of 30 s since the epoch,
and cron expressions are read in UTC. A tick missed while no beat process ran is not
replayed: a starting beat looks only forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from croniter import croniter

MIN_TICK_TTL = 60.0  # a taken tick is remembered at least this long (beats with skewed clocks)


@dataclass(frozen=True)
class Periodic:
    """One schedule: the task ``name`` is enqueued (without arguments) at every tick."""

    name: str
    cron: str | None = None
    every: float | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("periodic() takes cron=... or every=..., exactly one of them")
        if self.every is not None:
            if not isinstance(self.every, (int, float)) or isinstance(self.every, bool) or not self.every > 0:
                raise ValueError(f"every must be a number of seconds > 0, got {self.every!r}")
        elif not isinstance(self.cron, str) or not croniter.is_valid(self.cron):
            raise ValueError(f"cron must be a cron expression such as '*/5 * * * *', got {self.cron!r}")

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (seconds since the epoch)."""
        if self.every is not None:
            return float((math.floor(moment / self.every) + 1) * self.every)
        start = datetime.fromtimestamp(moment, tz=timezone.utc)
        return float(croniter(str(self.cron), start).get_next(float))

    def tick_id(self, tick: float) -> str:
        """The same string in every beat process for the same tick."""
        return str(round(tick * 1000))

    def ttl(self, tick: float) -> float:
        """How long the broker remembers a taken tick: two periods, at least a minute."""
        return max(MIN_TICK_TTL, 2 * (self.next_after(tick) - tick))
