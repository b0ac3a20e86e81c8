"""Prometheus exposition of ``App.stats()`` and ``App.workers()``.

The broker already keeps every number the dashboard shows, so the collector reads
them at scrape time instead of mirroring them in process-local counters: several
dashboards (or none) can run against one broker and all report the same values.
Each :func:`create_registry` builds its own ``CollectorRegistry``, never the global
one, so two apps in one process (or one test after another) do not collide.

Per task name (issue 14): ``runq_tasks_total{queue,task,outcome}`` and the histograms
``runq_task_run_seconds`` and ``runq_task_wait_seconds`` (labels ``queue``, ``task``) are the
fleet-wide totals the workers add to the broker with their heartbeats
(runq/observe/task_metrics.py). The broker's last-5-minute quantiles stay available as the gauges
``runq_recent_run_seconds`` / ``runq_recent_wait_seconds`` (label ``percentile``).

For autoscaling (issue 25): ``runq_queue_load{queue}``, see :func:`queue_load`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from runq.app import App
from runq.errors import RunqError
from runq.models import COUNTERS, Percentiles, QueueStats, WorkerInfo
from runq.observe.task_metrics import OUTCOMES, TaskSeries, read

STATES = tuple(QueueStats.__dataclass_fields__)
COUNTER_HELP = {
    "enqueued": "Tasks accepted by the broker.",
    "succeeded": "Tasks that finished successfully.",
    "failed": "Tasks moved to the dead-letter set (retries exhausted).",
    "retried": "Attempts that ended in a retry.",
    "cancelled": "Tasks cancelled before finishing.",
}


class RunqCollector(Collector):
    """Reads the broker on every scrape; a broker outage shows as ``runq_broker_up 0``, not a 500."""

    def __init__(self, app: App) -> None:
        self.app = app

    def describe(self) -> list[GaugeMetricFamily]:
        # Returning nothing keeps registration from calling collect() (and the broker).
        return []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        up = GaugeMetricFamily("runq_broker_up", "1 when the broker answered this scrape, else 0.")
        try:
            stats = self.app.stats()
            workers = self.app.workers()
            per_task = read(self.app.broker.task_metrics())
            stored = self.app.broker.storage_bytes()
        except (RunqError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        depth = GaugeMetricFamily("runq_queue_tasks", "Tasks per queue and state.", labels=["queue", "state"])
        for queue, counts in sorted(stats.queues.items()):
            for state in STATES:
                depth.add_metric([queue, state], getattr(counts, state))
        yield depth
        yield from retention_metrics(stats.queues, stored)

        for name in (*COUNTERS, *sorted(set(stats.counters) - set(COUNTERS))):
            help_text = COUNTER_HELP.get(name, f"Tasks counted as {name}.")
            counter = CounterMetricFamily(f"runq_tasks_{name}", help_text)
            counter.add_metric([], stats.counters.get(name, 0))
            yield counter

        yield from _task_metrics(per_task)
        yield _quantiles("runq_recent_wait_seconds", "Time from ready to started, last 5 minutes.", stats.wait)
        yield _quantiles("runq_recent_run_seconds", "Time from started to finished, last 5 minutes.", stats.run)

        throughput = GaugeMetricFamily("runq_throughput_tasks_per_second", "Tasks finished per second, last minute.")
        throughput.add_metric([], stats.throughput)
        yield throughput

        yield from _worker_metrics(workers)
        yield queue_load(stats.queues, workers)


def retention_metrics(queues: dict[str, QueueStats], stored: int | None) -> Iterator[GaugeMetricFamily]:
    """What finished tasks kept for their ``result_ttl`` cost (docs/reliability.md, "Retention"):
    how many each queue retains (``failed`` ones until purged) and the broker store's bytes."""
    retained = GaugeMetricFamily(
        "runq_retained_tasks",
        "Finished tasks the broker keeps (succeeded and cancelled for result_ttl, failed until purged).",
        labels=["queue"],
    )
    for queue, counts in sorted(queues.items()):
        retained.add_metric([queue], counts.retained)
    yield retained
    if stored is not None:
        size = GaugeMetricFamily(
            "runq_broker_storage_bytes",
            "Bytes the broker's store takes: Redis used_memory, PostgreSQL runq's tables and indexes, SQLite's file.",
        )
        size.add_metric([], stored)
        yield size


def _task_metrics(series: list[TaskSeries]) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
    """The per-task series every worker adds to the broker (runq/observe/task_metrics.py)."""
    tasks = CounterMetricFamily(
        "runq_tasks",
        "Attempts settled by the workers, per queue, task and outcome (succeeded, failed, retried, cancelled).",
        labels=["queue", "task", "outcome"],
    )
    run = HistogramMetricFamily(
        "runq_task_run_seconds", "How long each attempt ran (started to finished).", labels=["queue", "task"]
    )
    wait = HistogramMetricFamily(
        "runq_task_wait_seconds",
        "First attempts of tasks without parents: time from due (enqueued + delay) to started.",
        labels=["queue", "task"],
    )
    for one in series:
        labels = [one.queue, one.task]
        for outcome in OUTCOMES:
            tasks.add_metric([*labels, outcome], one.outcomes[outcome])
        run.add_metric(labels, one.run.labelled(), one.run.sum)
        wait.add_metric(labels, one.wait.labelled(), one.wait.sum)
    yield tasks
    yield run
    yield wait


def _quantiles(name: str, help_text: str, values: Percentiles) -> GaugeMetricFamily:
    """The broker's recent percentiles as a gauge. Its label is ``percentile``, not ``quantile``:
    that name belongs to summaries (``promtool check metrics`` refuses it on a gauge), and
    the broker keeps no ``_sum``/``_count`` to make this one. Aggregate the histograms instead."""
    family = GaugeMetricFamily(name, help_text, labels=["percentile"])
    for percentile, value in (("p50", values.p50), ("p95", values.p95), ("p99", values.p99)):
        if value is not None:
            family.add_metric([percentile], value)
    return family


def _worker_metrics(live: list[WorkerInfo]) -> Iterator[GaugeMetricFamily]:
    count = GaugeMetricFamily("runq_workers", "Workers with a live heartbeat.")
    count.add_metric([], len(live))
    yield count
    running = GaugeMetricFamily("runq_worker_running_tasks", "Tasks running on live workers.")
    running.add_metric([], sum(len(w.current) for w in live))
    yield running
    slots = GaugeMetricFamily("runq_worker_slots", "Concurrency summed over live workers.")
    slots.add_metric([], sum(w.concurrency for w in live))
    yield slots
    if live:
        oldest = GaugeMetricFamily("runq_worker_heartbeat_age_max_seconds", "Age of the stalest live heartbeat.")
        oldest.add_metric([], max(0.0, time.time() - min(w.last_seen for w in live)))
        yield oldest


def queue_load(queues: dict[str, QueueStats], live: list[WorkerInfo]) -> GaugeMetricFamily:
    """``runq_queue_load{queue}``: (running + ready) tasks over the slots of the live workers
    that drain the queue, the figure an autoscaler targets (keda-celery-scaler's): it moves as
    soon as the workers are busy, before a backlog forms. 1 means every slot is taken; above 1,
    tasks wait. With no worker on a queue the denominator is 1, so the load is the count
    itself and a scaler at zero replicas still sees work arrive (deploy/keda/)."""
    family = GaugeMetricFamily(
        "runq_queue_load",
        "Running plus ready tasks per worker slot on the queue (slots: live workers that drain it; at least 1).",
        labels=["queue"],
    )
    slots: dict[str, int] = {}
    for worker in live:
        for queue in worker.queues:
            slots[queue] = slots.get(queue, 0) + worker.concurrency
    for queue in sorted(set(queues) | set(slots)):
        counts = queues.get(queue, QueueStats())
        family.add_metric([queue], (counts.running + counts.pending) / max(1, slots.get(queue, 0)))
    return family


def create_registry(app: App) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunqCollector(app))
    return registry
