"""Runs the workloads on one library at a time against the private Redis; collects samples."""

from __future__ import annotations

import compileall
import importlib
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from runq.cli import bench as rb

from .peers.base import DRAIN, IO, ROOT, ROUND_TRIP, Peer, Variant

WORKLOADS = ("W1", "W2", "W3", "W4", "W5")


@dataclass
class Sizes:
    tasks: int = 20_000  # W1, W2
    trips: int = 300  # W3
    io_tasks: int = 2_000  # W4
    depths: tuple[int, ...] = (1_000, 100_000)  # W5
    batch: int = 1_000  # W1 bulk: tasks per bulk call
    timeout: float = 600.0


@dataclass
class Row:
    """One library (variant): metric name → one sample per run."""

    library: str
    variant: Variant
    version: str
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.library} ({self.variant.name})" if self.variant.name else self.library


class Harness:
    def __init__(self, url: str, sizes: Sizes, logs: Path, step: Callable[[str], None]) -> None:
        self.url = url
        self.sizes = sizes
        self.logs = logs
        self.step = step  # advances the progress bar, naming what runs next
        self.redis = redis.Redis.from_url(url)

    def flush(self) -> None:
        self.redis.flushall()

    def completions(self) -> int:
        return int(self.redis.get(rb.COUNTER_KEY) or 0)

    def env(self, variant: Variant, kind: str) -> dict[str, str]:
        return {
            "BENCH_REDIS_URL": self.url,
            rb.COUNTER_ENV: self.url,
            "PYTHONPATH": str(ROOT),
            "RUNQ_LOG_LEVEL": "WARNING",
            **({"BENCH_CONCURRENCY": "50"} if kind == IO else {}),
            **variant.env,
        }

    # -- one library -----------------------------------------------------------------

    def run_library(self, name: str, workloads: list[str], runs: int) -> list[Row]:
        module = importlib.import_module(f"bench.peers.{name}_app")
        peer: Peer = module.PEER()
        rows = []
        try:
            for variant in peer.variants:
                row = Row(name, variant, peer.version)
                rows.append(row)
                for workload in workloads:
                    if workload not in variant.workloads and not (workload == "W1" and "W1b" in variant.workloads):
                        continue
                    if workload == "W5" and name != "runq":
                        continue
                    for run in range(runs):
                        self.step(f"{row.label} {workload} run {run + 1}/{runs}")
                        try:
                            self.measure(peer, variant, workload, row)
                        except Exception as exc:  # one failure must not end the whole comparison
                            row.errors.append(f"{workload}: {type(exc).__name__}: {exc}")
        finally:
            peer.close()
        return rows

    def measure(self, peer: Peer, variant: Variant, workload: str, row: Row) -> None:
        self.flush()
        peer.reset(variant)
        s = self.sizes
        if workload == "W1":
            if "W1" in variant.workloads:
                started = time.perf_counter()
                peer.enqueue("noop", s.tasks)
                row.samples["W1 single"].append(s.tasks / (time.perf_counter() - started))
            if peer.has_bulk and "W1b" in variant.workloads:
                self.flush()
                peer.reset(variant)
                started = time.perf_counter()
                peer.enqueue_bulk("noop", s.tasks, s.batch)
                row.samples["W1 bulk"].append(s.tasks / (time.perf_counter() - started))
        elif workload == "W2":
            drain = self.drain(peer, variant, "noop", s.tasks, DRAIN)
            row.samples["W2 total"].append(drain.rate)
            row.samples["W2 steady"].append(drain.steady)
        elif workload == "W3":
            trips = min(s.trips, variant.trips or s.trips)
            log = self.logs / f"{row.label}-W3.log".replace(" ", "_").replace("/", "_")
            with rb.workers(peer.worker_commands(variant, ROUND_TRIP), self.env(variant, ROUND_TRIP), log):
                samples = peer.round_trips(variant, trips, timeout=60)
            latency = rb.Latency.of(samples)
            row.samples["W3 p50"].append(latency.p50 * 1000)
            row.samples["W3 p95"].append(latency.p95 * 1000)
            row.samples["W3 p99"].append(latency.p99 * 1000)
            row.samples["W3 trips"].append(trips)
        elif workload == "W4":
            drain = self.drain(peer, variant, "sleep", s.io_tasks, IO)
            row.samples["W4 total"].append(drain.rate)
            row.samples["W4 steady"].append(drain.steady)
        elif workload == "W5":
            self.depth(row)

    def drain(self, peer: Peer, variant: Variant, kind: str, n: int, mode: str) -> rb.Drain:
        """Pre-enqueue ``n`` tasks (bulk where the library has it), launch the workers, count INCRs."""
        n = min(n, variant.cap or n)
        if peer.has_bulk:
            peer.enqueue_bulk(kind, n, self.sizes.batch)
        else:
            peer.enqueue(kind, n)
        log = self.logs / f"{peer.name}-{variant.name or 'default'}-{mode}.log".replace(" ", "_").replace("/", "_")
        started = time.perf_counter()
        with rb.workers(peer.worker_commands(variant, mode), self.env(variant, mode), log):
            return rb.watch(self.completions, n, started, self.sizes.timeout)

    def depth(self, row: Row) -> None:
        """W5 (runq only): drain rate at each depth on Redis (+ bytes per queued task) and SQLite."""
        for n in self.sizes.depths:
            result = rb.depth(self.url, n, timeout=self.sizes.timeout * 6)
            row.samples[f"W5 redis {n:,}"].append(result.drain.rate)
            if result.bytes_per_task is not None:
                row.samples[f"W5 bytes/task {n:,}"].append(result.bytes_per_task)
        for n in self.sizes.depths:
            path = self.logs / "w5-sqlite.db"
            result = rb.depth(f"sqlite:///{path}", n, timeout=self.sizes.timeout * 6)
            row.samples[f"W5 sqlite {n:,}"].append(result.drain.rate)
            rb.reset(f"sqlite:///{path}")


def count_steps(libraries: list[str], workloads: list[str], runs: int) -> int:
    total = 0
    for name in libraries:
        try:
            module = importlib.import_module(f"bench.peers.{name}_app")
        except Exception:  # reported when the library's turn comes
            continue
        for variant in module.PEER.variants:
            for workload in workloads:
                if workload == "W5" and name != "runq":
                    continue
                if workload in variant.workloads or (workload == "W1" and "W1b" in variant.workloads):
                    total += runs
    return total


def interleaved(
    harness: Harness, libs: list[str], workloads: list[str], runs: int, failed: dict[str, str]
) -> list[Row]:
    """Run after run, each library in turn (the order reversed every other run), so that a load
    that drifts on a shared machine weighs on every library alike; one row per library variant.
    A library that cannot even start is put in ``failed`` and skipped from then on."""
    rows: dict[tuple[str, str], Row] = {}
    for run in range(runs):
        for name in libs if run % 2 == 0 else libs[::-1]:
            if name in failed:
                continue
            try:
                for row in harness.run_library(name, workloads, 1):
                    kept = rows.setdefault((name, row.variant.name), row)
                    if kept is not row:
                        for metric, values in row.samples.items():
                            kept.samples[metric] += values
                        kept.errors += row.errors
            except Exception as exc:  # an adapter that cannot even start
                failed[name] = f"{type(exc).__name__}: {exc}"
    return sorted(rows.values(), key=lambda row: libs.index(row.library))


def environment_ready() -> None:
    """Run from the checkout, with runq's bytecode written: the peers come from wheels, which pip
    compiles on install, while runq is usually an editable checkout. Under PYTHONDONTWRITEBYTECODE
    every runq process would compile its source at start-up (~40 ms per worker), a cost no
    installed runq pays."""
    os.chdir(ROOT)  # worker commands import bench.peers.* from here
    compileall.compile_dir(ROOT / "runq", quiet=1)
    compileall.compile_dir(ROOT / "bench", quiet=1)
