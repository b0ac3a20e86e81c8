"""The commands about the whole queue: status, metrics, workers, pause and resume."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from typing import Any

import click

from runq import options as rules
from runq.cli import console as out
from runq.cli.group import STATE_COLUMNS, _app, checked, common, main
from runq.models import QueueStats, Stats, WorkerInfo, queue_of, to_datetime

# -- the whole queue ---------------------------------------------------------------------


def _totals(stats: Stats) -> QueueStats:
    return QueueStats(**{name: sum(getattr(q, name) for q in stats.queues.values()) for name in STATE_COLUMNS})


def _started_only(stats: Stats, live: list[WorkerInfo]) -> Stats:
    """``running`` as a user means it: started. A broker marks a task running when a worker
    claims it, also when the worker took it ahead for a slot that is still busy; the
    workers' heartbeats (at most a few seconds old) say which ones those are."""
    ahead: Counter[str] = Counter()
    for worker in live:
        for task_id in worker.prefetched:
            with contextlib.suppress(ValueError):
                ahead[queue_of(task_id)] += 1
    queues = {
        name: dataclasses.replace(q, running=max(0, q.running - ahead[name])) if ahead[name] else q
        for name, q in stats.queues.items()
    }
    return dataclasses.replace(stats, queues=queues)


def _queue_table(stats: Stats, paused: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Tasks per queue and state; a paused queue is marked, and listed even while empty."""
    queues = {name: stats.queues.get(name, QueueStats()) for name in {*stats.queues, *paused}}
    rows = [
        (f"{name} (paused)" if name in paused else name, *(getattr(q, s) for s in STATE_COLUMNS))
        for name, q in sorted(queues.items())
    ]
    total = _totals(stats)
    out.table(("queue", *STATE_COLUMNS), rows, footer=("total", *(getattr(total, s) for s in STATE_COLUMNS)))


@main.command()
@common
def status(url: str | None, as_json: bool) -> None:
    """Tasks per queue and state, and how many workers are live."""
    app = _app(url, create=False)
    live = app.workers()
    stats = _started_only(app.stats(), live)
    paused = app.paused()
    prefetched = sum(len(w.prefetched) for w in live)
    if as_json:
        queues = {name: vars(q) for name, q in sorted(stats.queues.items())}
        out.echo_json(
            {
                "queues": queues,
                "totals": vars(_totals(stats)),
                "workers": len(live),
                "prefetched": prefetched,
                "breakers": _breakers_json(stats.breakers),
                "paused": sorted(paused),
            }
        )
        return
    _queue_table(stats, paused)
    running = sum(len(w.current) for w in live)
    out.line(
        f"{len(live)} worker(s) live, {running} running, {prefetched} prefetched (claimed, not started); "
        f"throughput {out.rate(stats.throughput)}",
        "bold",
    )
    if stats.breakers:
        out.line(
            "breakers: "
            + ", ".join(f"{name} {b['state']} ({b['failures']} failed)" for name, b in stats.breakers.items())
        )


@main.command()
@click.argument("queue", callback=checked(rules.check_queue))
@common
def pause(queue: str, url: str | None, as_json: bool) -> None:
    """Stop workers starting tasks of QUEUE; enqueue goes on, running tasks finish."""
    _pause(queue, url, as_json, True)


@main.command()
@click.argument("queue", callback=checked(rules.check_queue))
@common
def resume(queue: str, url: str | None, as_json: bool) -> None:
    """Let workers start tasks of QUEUE again."""
    _pause(queue, url, as_json, False)


def _pause(queue: str, url: str | None, as_json: bool, paused: bool) -> None:
    app = _app(url)
    changed = app.pause(queue) if paused else app.resume(queue)
    if as_json:
        out.echo_json({"queue": queue, "paused": paused, "changed": changed})
        return
    verb = "paused" if paused else "resumed"
    click.echo(f"{verb} {queue}" if changed else f"{queue} was {'already paused' if paused else 'not paused'}")


@main.command()
@common
def metrics(url: str | None, as_json: bool) -> None:
    """Counts, counters, wait/run latency p50/p95/p99 (last 5 min), throughput (last minute), and
    the finished tasks kept with the bytes the broker's store takes (docs/reliability.md, "Retention")."""
    app = _app(url, create=False)
    stats = _started_only(app.stats(), app.workers())
    retained = {"tasks": sum(q.retained for q in stats.queues.values()), "storage_bytes": app.broker.storage_bytes()}
    if as_json:
        out.echo_json({**stats.to_dict(), "breakers": _breakers_json(stats.breakers), "retained": retained})
        return
    _queue_table(stats)
    counters = stats.counters
    out.table(tuple(counters), [tuple(counters.values())], title="counters")
    rows = [(kind, *(out.seconds(getattr(p, q)) for q in ("p50", "p95", "p99"))) for kind, p in _latency(stats)]
    out.table(("latency, last 5 min", "p50", "p95", "p99"), rows)
    out.line(f"throughput {out.rate(stats.throughput)} (tasks finished, last minute)", "bold")
    stored = retained["storage_bytes"]
    size = "" if stored is None else f"; the broker's store takes {stored / 1e6:,.1f} MB"
    out.line(f"retained {retained['tasks']:,} finished tasks (kept for result_ttl, failed until purged){size}")


def _latency(stats: Stats) -> list[tuple[str, Any]]:
    return [("wait (ready → started)", stats.wait), ("run (started → finished)", stats.run)]


@main.command()
@common
def workers(url: str | None, as_json: bool) -> None:
    """Live workers (by heartbeat) and what they are running."""
    found = _app(url, create=False).workers()
    if as_json:
        out.echo_json([_worker_dict(w) for w in found])
        return
    now = time.time()
    rows = [
        (
            w.id,
            w.pool,
            w.concurrency,
            ",".join(w.queues),
            len(w.current),
            len(w.prefetched),
            w.counts.get("succeeded", 0),
            w.counts.get("retried", 0),
            w.counts.get("failed", 0),
            f"{now - w.started_at:.0f}s",
        )
        for w in found
    ]
    columns = (
        *("worker", "pool", "concurrency", "queues", "running", "prefetched"),
        *("succeeded", "retried", "failed", "up"),
    )
    out.table(columns, rows)
    if not found:
        out.line("no live workers", "yellow")


def _worker_dict(worker: WorkerInfo) -> dict[str, Any]:
    data = dict(vars(worker))
    data["queues"], data["current"] = list(worker.queues), list(worker.current)
    data["started_at"], data["last_seen"] = _iso(worker.started_at), _iso(worker.last_seen)
    data["prefetched"] = list(worker.prefetched)
    return data


def _iso(timestamp: float | None) -> str | None:
    """Every ``--json`` time is ISO 8601 UTC, as the README says (brokers keep epoch seconds)."""
    when = to_datetime(float(timestamp)) if timestamp else None
    return when.isoformat() if when else None


def _breakers_json(breakers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {**state, "open_until": _iso(state.get("open_until"))} for name, state in breakers.items()}
