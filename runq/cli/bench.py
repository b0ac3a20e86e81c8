"""runq's own benchmark workloads: what ``runq bench`` runs, and what ``python -m bench`` reuses.

Each workload takes a broker URL and returns plain numbers:

* **enqueue** (W1): N no-op tasks one ``delay()`` at a time, then N with ``enqueue_many``
  in batches; tasks per second.
* **drain** (W2): N pre-enqueued no-op tasks, K ``runq worker`` processes; the clock starts
  when the workers are launched (start-up included) and stops at the last completion;
  the steady rate is the one between the 10 % and the 90 % completion marks.
* **round trip** (W3): sequential ``delay()`` → ``result()`` with one idle worker; p50/p95/p99.
* **io-bound** (W4): N tasks that sleep 10 ms, K workers with ``--concurrency`` each.
* **depth** (W5): the drain at several queue depths, and on Redis the memory each queued
  task takes (``INFO memory`` ``used_memory`` delta / N).

Completions are counted by the broker's own ``succeeded`` counter (``app.stats()``),
unless ``RUNQ_BENCH_COUNTER`` names a Redis URL: then every benchmark task also does one
``INCR`` on :data:`COUNTER_KEY` there, the library-neutral count ``python -m bench`` uses
for runq and for every peer alike (see :func:`count_completion`).

Workers are real processes: ``python -m runq worker runq.cli.bench:app --pool thread``.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runq.app import App
from runq.logs import mask_url
from runq.tasks import Signature, Task

COUNTER_KEY = "bench:done"
COUNTER_ENV = "RUNQ_BENCH_COUNTER"
SLEEP = 0.01
BATCH = 1000
POLL = 0.005
WORKER_APP = "runq.cli.bench:app"

app = App()  # the worker's copy gets its URL from --url


# -- the tasks (shared in spirit with every peer adapter) ----------------------------


@functools.cache
def _counter(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def count_completion() -> None:
    """One ``INCR`` on the benchmark counter, if ``RUNQ_BENCH_COUNTER`` names a Redis URL.

    Every library's benchmark task calls this, so each pays the same tiny cost and the
    harness counts completions the same way for all of them.
    """
    url = os.environ.get(COUNTER_ENV)
    if url:
        _counter(url).incr(COUNTER_KEY)


@app.task(name="bench.noop")
def noop() -> None:
    count_completion()


@app.task(name="bench.sleep")
def sleep() -> None:
    time.sleep(SLEEP)
    count_completion()


@app.task(name="bench.echo")
def echo() -> int:
    """The round-trip task: a no-op that returns 1 (some peers store no result for None)."""
    count_completion()
    return 1


# -- results -------------------------------------------------------------------------


@dataclass
class Drain:
    """A drain: total seconds from worker launch to the last completion, and the steady rate."""

    tasks: int
    seconds: float
    steady: float  # tasks/s between the 10 % and the 90 % completion marks

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, samples: list[float]) -> Latency:
        ordered = sorted(samples)
        return cls(*(percentile(ordered, q) for q in (50.0, 95.0, 99.0)))


@dataclass
class Depth:
    tasks: int
    drain: Drain
    bytes_per_task: float | None  # Redis only


@dataclass
class Report:
    """What ``runq bench`` prints: one field per workload that ran."""

    url: str
    tasks: int
    workers: int
    enqueue: float = 0.0
    enqueue_bulk: float = 0.0
    drain: Drain | None = None
    round_trip: Latency | None = None
    io_bound: Drain | None = None
    depth: list[Depth] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str, str]]:
        """(workload, result, what it measured) for a table."""
        out = [
            ("W1 enqueue", f"{self.enqueue:,.0f}/s", f"{self.tasks:,} delay() calls"),
            ("W1 bulk", f"{self.enqueue_bulk:,.0f}/s", f"enqueue_many, {BATCH:,} per call"),
        ]
        if self.drain is not None:
            out.append(self._drained("W2 drain", self.drain))
        if self.round_trip is not None:
            p = self.round_trip
            out.append(
                ("W3 round trip", f"p50 {p.p50 * 1000:.2f} ms", f"p95 {p.p95 * 1000:.2f} ms, p99 {p.p99 * 1000:.2f} ms")
            )
        if self.io_bound is not None:
            out.append(self._drained("W4 io-bound", self.io_bound))
        return out

    def _drained(self, label: str, drained: Drain) -> tuple[str, str, str]:
        detail = f"{drained.tasks:,} tasks, {self.workers} workers, {drained.seconds:.2f}s with start-up"
        return label, f"{drained.rate:,.0f}/s (steady {drained.steady:,.0f}/s)", detail

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("drain", "io_bound"):
            value = getattr(self, name)
            if value is not None:
                data[name]["rate"] = value.rate
        for item, depth in zip(data["depth"], self.depth, strict=True):
            item["drain"]["rate"] = depth.drain.rate
        return data


def percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted samples, interpolated (as ``numpy.percentile``)."""
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- brokers and workers ---------------------------------------------------------------


def reset(url: str) -> None:
    """Empty the broker: delete the SQLite file, or FLUSHDB the Redis database (never use a shared one)."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        import redis

        with redis.Redis.from_url(url) as client:
            client.flushdb()


def worker_command(url: str, concurrency: int | None = None, pool: str = "thread") -> list[str]:
    """The documented worker command runq is benchmarked with: the thread pool unless told, default settings."""
    command = [sys.executable, "-m", "runq", "worker", WORKER_APP, "--url", url, "--pool", pool]
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    return command


@contextmanager
def workers(commands: list[list[str]], env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[None]:
    """Start each command as a process (output to ``log`` or nowhere); kill them all at the end."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    procs = [
        subprocess.Popen(command, env=merged, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        for command in commands
    ]
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        for proc in procs:
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def watch(done: Callable[[], int], total: int, started: float, timeout: float, poll: float = POLL) -> Drain:
    """Poll a completion count until it reaches ``total``; note the 10 % and 90 % marks."""
    low, high = max(1, total // 10), max(1, total * 9 // 10)
    at_low = at_high = None
    deadline = started + timeout
    while True:
        count = done()
        now = time.perf_counter()
        if at_low is None and count >= low:
            at_low = now
        if at_high is None and count >= high:
            at_high = now
        if count >= total:
            break
        if now > deadline:
            raise TimeoutError(f"only {count} of {total} tasks completed within {timeout:.0f}s")
        time.sleep(poll)
    assert at_low is not None and at_high is not None
    steady = (high - low) / (at_high - at_low) if at_high > at_low else float("nan")
    return Drain(total, now - started, steady)


def succeeded(app: App) -> Callable[[], int]:
    return lambda: app.stats().counters.get("succeeded", 0)


# -- the workloads -----------------------------------------------------------------------


def bound(app: App, name: str) -> Task[[], Any]:
    """The benchmark task ``name`` registered on ``app`` (a producer's own App)."""
    functions: dict[str, Callable[[], Any]] = {"bench.noop": noop.fn, "bench.sleep": sleep.fn, "bench.echo": echo.fn}
    return app.tasks.get(name) or app.task(name=name)(functions[name])


def enqueue_single(app: App, n: int) -> float:
    """W1: tasks/s for ``n`` ``delay()`` calls from this process."""
    delay = bound(app, "bench.noop").delay
    started = time.perf_counter()
    for _ in range(n):
        delay()
    return n / (time.perf_counter() - started)


def enqueue_bulk(app: App, n: int, batch: int = BATCH, name: str = "bench.noop") -> float:
    """W1 bulk: tasks/s for ``n`` tasks through ``enqueue_many``, ``batch`` per call."""
    signature = Signature(name, app=app)
    started = time.perf_counter()
    for start in range(0, n, batch):
        app.enqueue_many([signature] * min(batch, n - start))
    return n / (time.perf_counter() - started)


def drain(
    url: str,
    n: int,
    processes: int = 2,
    task: str = "bench.noop",
    concurrency: int | None = None,
    timeout: float = 600.0,
    log: Path | None = None,
) -> Drain:
    """W2 / W4: pre-enqueue ``n`` tasks, launch ``processes`` workers, time to the last completion."""
    reset(url)
    bench_app = App(url)
    try:
        enqueue_bulk(bench_app, n, name=task)
        base = succeeded(bench_app)()
        done = succeeded(bench_app)
        env = {"RUNQ_LOG_LEVEL": "WARNING"}
        started = time.perf_counter()
        with workers([worker_command(url, concurrency) for _ in range(processes)], env, log):
            return watch(lambda: done() - base, n, started, timeout, poll=0.02)
    finally:
        bench_app.close()


def round_trips(url: str, n: int, timeout: float = 60.0, log: Path | None = None) -> Latency:
    """W3: ``n`` sequential delay → result round trips (seconds) with one idle worker."""
    reset(url)
    bench_app = App(url)
    task = bound(bench_app, "bench.echo")
    try:
        with workers([worker_command(url)], {"RUNQ_LOG_LEVEL": "WARNING"}, log):
            task.delay().result(timeout=timeout)  # the worker is up and warm
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                task.delay().result(timeout=timeout)
                samples.append(time.perf_counter() - started)
        return Latency.of(samples)
    finally:
        bench_app.close()


def redis_memory(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as client:
        return int(client.info("memory")["used_memory"])


def depth(url: str, n: int, processes: int = 2, timeout: float = 3600.0) -> Depth:
    """W5: memory per queued task (Redis), then the drain of ``n`` queued tasks."""
    per_task = None
    if not url.startswith("sqlite"):
        reset(url)
        bench_app = App(url)
        try:
            enqueue_bulk(bench_app, 1)  # create the queue's keys and load the scripts first
            before = redis_memory(url)
            enqueue_bulk(bench_app, n)
            per_task = (redis_memory(url) - before) / n
        finally:
            bench_app.close()
    return Depth(n, drain(url, n, processes, timeout=timeout), per_task)


def check_empty(url: str) -> None:
    """Refuse a broker that holds anything: the benchmark empties what it runs on."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
        if path.exists() and path.stat().st_size > 0:
            raise ValueError(f"{path} exists and runq bench would delete it: give a new file, or --force")
        return
    import redis

    with redis.Redis.from_url(url) as client:
        keys = int(client.dbsize())
    if keys:
        raise ValueError(
            f"{mask_url(url)} holds {keys} keys and runq bench empties the database it runs on: "
            "give an empty database (e.g. another db number), or --force"
        )


def smoke(
    url: str | None, tasks: int, workers_: int, trips: int, progress: Callable[[str], None], force: bool = False
) -> Report:
    """``runq bench``: every runq workload once at small sizes (a temporary SQLite file by default).

    A ``url`` given is emptied before and after, so it must be empty to begin with unless ``force``.
    """
    if url and not force:
        check_empty(url)  # the CLI checks first, for a usage error; this guards other callers
    with tempfile.TemporaryDirectory(prefix="runq-bench-") as tmp:
        target = url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        report = Report(url=target, tasks=tasks, workers=workers_)
        reset(target)
        bench_app = App(target)
        try:
            progress("W1 enqueue")
            report.enqueue = enqueue_single(bench_app, tasks)
            report.enqueue_bulk = enqueue_bulk(bench_app, tasks)
        finally:
            bench_app.close()
        progress("W2 drain")
        report.drain = drain(target, tasks, workers_)
        progress("W3 round trip")
        report.round_trip = round_trips(target, trips)
        progress("W4 io-bound")
        report.io_bound = drain(target, tasks, workers_, task="bench.sleep", concurrency=50)
        reset(target)
    return report


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
