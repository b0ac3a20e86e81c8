"""Per-task Prometheus series, counted by the workers and summed by the broker.

Each worker counts what its own runs did, per ``(queue, task)``: outcomes, and the
bucket counts and sums of two histograms (run time, and wait time from ready to
started). It sends the *deltas* to the broker with its heartbeat (every 2 s) and once
more at a graceful shutdown, in one :meth:`Broker.add_task_metrics` call, so the per-task
cost on the settle path is a dictionary update in memory, never a broker write. The broker
adds the deltas to fleet-wide totals, which the dashboard's ``/metrics`` reads at scrape
time: one scrape sees every worker, and totals survive worker restarts.

A flush that fails (the broker is down) is given back and sent with the next one, so a
short outage loses nothing; a worker killed with SIGKILL loses what it counted since its
last flush (at most ~2 s of its runs). Counters may therefore lag or, after a reset of the
broker's data, restart from zero: Prometheus' ``rate()`` handles both.

Stored form, the same on every broker: per queue, ``field -> total`` where ``field`` is
``"<series>:<task>"``; ``series`` is an outcome, ``run_sum``/``wait_sum``, or
``run_le_<bound>``/``wait_le_<bound>`` (count of observations in that bucket alone, not
cumulative). Buckets are named by their bound, not their position, so changing
:data:`BUCKETS` later never misreads stored counts.
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from runq.context import TaskContext
from runq.observe.middleware import Middleware, TaskOutcome

# Seconds. Prometheus' defaults stop at 10 s; tasks run for minutes, so the top goes further.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, math.inf)
OUTCOMES = ("succeeded", "failed", "retried", "cancelled")
OTHER_TASK = "(other)"  # the label of every task name the worker does not have registered
HISTOGRAMS = ("run", "wait")

Deltas = dict[str, dict[str, float]]  # queue -> field -> amount
_SERIES = {"succeeded": "succeeded", "retrying": "retried", "failed": "failed", "cancelled": "cancelled"}


def _bound(value: float) -> str:
    return "+Inf" if value == math.inf else repr(value)


_BUCKET_NAMES = tuple(_bound(bound) for bound in BUCKETS)


class _Names(NamedTuple):
    outcomes: dict[str, str]  # outcome -> field
    buckets: dict[str, tuple[str, ...]]  # histogram -> field per bucket
    sums: dict[str, str]  # histogram -> field


@functools.lru_cache(maxsize=4096)
def _names(task: str) -> _Names:
    """The field names of one task, built once (``record`` runs for every settled attempt)."""
    return _Names(
        {outcome: f"{outcome}:{task}" for outcome in OUTCOMES},
        {h: tuple(f"{h}_le_{bound}:{task}" for bound in _BUCKET_NAMES) for h in HISTOGRAMS},
        {h: f"{h}_sum:{task}" for h in HISTOGRAMS},
    )


class TaskMetrics(Middleware):
    """One worker's counts since its last flush, fed by ``on_finish``; safe from any thread."""

    def __init__(self, known: Callable[[str], bool]) -> None:
        self._known = known
        self._lock = threading.Lock()
        self._deltas: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))

    def record(self, queue: str, task: str | None, outcome: str, run: float | None, wait: float | None) -> None:
        """Count one settled attempt; ``run``/``wait`` in seconds when known (else not observed)."""
        names = _names(task if task is not None and self._known(task) else OTHER_TASK)
        with self._lock:  # (the two histograms written out: this runs for every settled attempt)
            series = self._deltas[queue]
            series[names.outcomes[outcome]] += 1
            if run is not None:
                run = max(0.0, run)
                series[names.buckets["run"][bisect.bisect_left(BUCKETS, run)]] += 1
                series[names.sums["run"]] += run
            if wait is not None:
                wait = max(0.0, wait)
                series[names.buckets["wait"][bisect.bisect_left(BUCKETS, wait)]] += 1
                series[names.sums["wait"]] += wait

    def on_finish(self, task: TaskContext, outcome: TaskOutcome) -> None:
        self.record(task.queue, task.name, _SERIES[outcome.status], outcome.duration, outcome.wait)

    def take(self) -> Deltas:
        """Everything counted so far, leaving the counts at zero."""
        with self._lock:
            taken, self._deltas = self._deltas, defaultdict(lambda: defaultdict(float))
        return {queue: dict(series) for queue, series in taken.items()}

    def give_back(self, deltas: Deltas) -> None:
        """Return deltas a flush could not deliver, to go with the next one."""
        with self._lock:
            for queue, series in deltas.items():
                for name, amount in series.items():
                    self._deltas[queue][name] += amount

    def flush(self, add: Callable[[Deltas], None]) -> None:
        """Send the deltas through ``add`` (the broker's ``add_task_metrics``); on any error
        they are kept for the next flush and the error propagates."""
        deltas = self.take()
        if not deltas:
            return
        try:
            add(deltas)
        except BaseException:
            self.give_back(deltas)
            raise


@dataclass
class Histogram:
    """Cumulative bucket counts in :data:`BUCKETS` order, as Prometheus exposes them."""

    buckets: list[float] = field(default_factory=lambda: [0.0] * len(BUCKETS))
    sum: float = 0.0

    @property
    def count(self) -> float:
        return self.buckets[-1]

    def labelled(self) -> list[tuple[str, float]]:
        return list(zip(_BUCKET_NAMES, self.buckets, strict=True))


@dataclass
class TaskSeries:
    """The fleet's totals for one ``(queue, task)``."""

    queue: str
    task: str
    outcomes: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    run: Histogram = field(default_factory=Histogram)
    wait: Histogram = field(default_factory=Histogram)


def read(totals: Mapping[str, Mapping[str, float]]) -> list[TaskSeries]:
    """The broker's stored totals as series, sorted by queue and task. Unknown fields are
    skipped; a bucket bound not in :data:`BUCKETS` counts in the next larger one."""
    found: dict[tuple[str, str], TaskSeries] = {}
    per_bucket: dict[tuple[str, str, str], list[float]] = {}
    for queue, fields_ in totals.items():
        for name, amount in fields_.items():
            series_name, sep, task = name.partition(":")
            if not sep:
                continue
            series = found.setdefault((queue, task), TaskSeries(queue, task))
            if series_name in OUTCOMES:
                series.outcomes[series_name] += amount
                continue
            histogram, _, rest = series_name.partition("_")
            if histogram not in HISTOGRAMS:
                continue
            if rest == "sum":
                getattr(series, histogram).sum += amount
            elif rest.startswith("le_"):
                try:
                    bound = float(rest[3:])
                except ValueError:
                    continue
                counts = per_bucket.setdefault((queue, task, histogram), [0.0] * len(BUCKETS))
                counts[bisect.bisect_left(BUCKETS, bound)] += amount
    for (queue, task, histogram), counts in per_bucket.items():
        running = 0.0
        target = getattr(found[(queue, task)], histogram)
        for i, amount in enumerate(counts):
            running += amount
            target.buckets[i] = running
    return [found[key] for key in sorted(found)]
