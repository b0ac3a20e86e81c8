"""Enqueue throughput from one asyncio event loop (issue 15): a micro-benchmark, not a test.

    .venv/bin/python -m bench.aio                              # Redis (private server) and SQLite
    .venv/bin/python -m bench.aio --brokers redis --tasks 20000 --concurrency 1,16,64,256 --runs 5
    .venv/bin/python -m bench.aio --brokers postgres --postgres-url postgresql://postgres@127.0.0.1/postgres

Per broker, in one process and one event loop, each measured ``--runs`` times (median, min-max):

- ``delay()``: the blocking call in a plain loop, the peer the async figures are compared with;
- ``adelay() x C``: ``--tasks`` calls of ``await noop.adelay()`` from C concurrent coroutines
  sharing an ``asyncio.Semaphore(C)`` (C = 1 is one ``await`` after another);
- ``aenqueue_many``: the same tasks in batches of 1,000 signatures.

Next to each async figure: the longest the loop went without running a 1 ms ticker
coroutine (its worst stall), which stays small when nothing blocks the loop. Every
measurement starts on an empty broker (Redis flushed, a new SQLite file, a new schema in
a PostgreSQL database the bench creates for itself and drops at the end). Redis runs on a
private ``redis-server`` on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import runq
from tests.support.servers import RedisServer


def make_app(url: str) -> tuple[runq.App, runq.Task[[], None]]:
    app = runq.App(url)

    def noop() -> None:
        return None

    return app, app.task(name="noop")(noop)


async def _ticking(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Run ``work`` next to a 1 ms ticker: (seconds taken, longest gap between ticks)."""
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    await work()
    ended = time.perf_counter()
    stop.set()
    await ticking
    marks = [started, *(t for t in ticks if t > started), ended]
    return ended - started, max(b - a for a, b in zip(marks, marks[1:], strict=False))  # noqa: RUF007


async def measure_async(app: runq.App, noop: runq.Task[[], None], tasks: int, concurrency: int) -> tuple[float, float]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            await noop.adelay()

    async def work() -> None:
        if concurrency == 1:
            for _ in range(tasks):
                await noop.adelay()
        else:
            await asyncio.gather(*(one() for _ in range(tasks)))

    seconds, gap = await _ticking(work)
    return tasks / seconds, gap


async def measure_many(app: runq.App, noop: runq.Task[[], None], tasks: int) -> tuple[float, float]:
    async def work() -> None:
        for start in range(0, tasks, 1000):
            await app.aenqueue_many([noop.s() for _ in range(min(1000, tasks - start))])

    seconds, gap = await _ticking(work)
    return tasks / seconds, gap


def measure_sync(noop: runq.Task[[], None], tasks: int) -> float:
    started = time.perf_counter()
    for _ in range(tasks):
        noop.delay()
    return tasks / (time.perf_counter() - started)


def summary(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    low, mid, high = min(values) * scale, statistics.median(values) * scale, max(values) * scale
    return f"{mid:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def bench_broker(fresh: Callable[[], str], label: str, tasks: int, levels: list[int], runs: int) -> list[str]:
    """Every measurement on an empty broker (``fresh()`` gives its URL) and a new App."""
    rates: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}

    def sync_round() -> None:
        app, noop = make_app(fresh())
        try:
            noop.delay()  # connect outside the measurement
            rates.setdefault("delay()", []).append(measure_sync(noop, tasks))
        finally:
            app.close()

    async def async_round(name: str, level: int) -> None:
        app, noop = make_app(fresh())
        try:
            await noop.adelay()
            rate, gap = await (measure_many(app, noop, tasks) if level == 0 else measure_async(app, noop, tasks, level))
            rates.setdefault(name, []).append(rate)
            gaps.setdefault(name, []).append(gap)
        finally:
            await app.aclose()

    for _ in range(runs):
        sync_round()
        for level in levels:
            asyncio.run(async_round(f"adelay() x {level}", level))
        asyncio.run(async_round("aenqueue_many (1,000)", 0))
    base = statistics.median(rates["delay()"])
    lines = []
    for name, values in rates.items():
        gap = summary(gaps[name], 1000, 1) + " ms" if name in gaps else "—"
        ratio = statistics.median(values) / base
        lines.append(f"| {label} | {name} | {summary(values)} | {ratio:.2f}x | {gap} |")
    return lines


@contextlib.contextmanager
def empty_brokers(broker: str, tmp: str, postgres_url: str | None) -> Iterator[Callable[[], str]]:
    """A function giving the URL of an empty broker of kind ``broker`` at each call."""
    counter = itertools.count()
    if broker == "redis":
        (Path(tmp) / "redis").mkdir()
        server = RedisServer(Path(tmp) / "redis")

        def flushed() -> str:
            server.flush()
            return server.url

        try:
            yield flushed
        finally:
            server.kill()
    elif broker == "sqlite":
        yield lambda: f"sqlite:///{tmp}/bench-{next(counter)}.db"
    elif broker == "postgres":
        if not postgres_url:
            raise SystemExit("--brokers postgres needs --postgres-url")
        with private_database(postgres_url) as database:
            yield lambda: f"{database}?schema=bench_{next(counter)}"
    else:
        raise SystemExit(f"unknown broker {broker!r}")


@contextlib.contextmanager
def private_database(admin_url: str) -> Iterator[str]:
    """A database of our own on the server of ``admin_url``, dropped at the end (as the tests do)."""
    import psycopg

    name = f"runq_bench_aio_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", default="redis,sqlite", help="comma-separated: redis, sqlite, postgres")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", default="1,16,64,256", help="coroutines enqueueing at once")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="for postgres: a server URL; the bench creates and drops its own database there",
    )
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    print(f"{args.tasks:,} no-op tasks per measurement, {args.runs} runs: median (min-max)\n")
    print("| broker | call | tasks/s | vs delay() | loop's worst stall |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for broker in args.brokers.split(","):
            with empty_brokers(broker, tmp, args.postgres_url) as fresh:
                print("\n".join(bench_broker(fresh, broker, args.tasks, levels, args.runs)), flush=True)


if __name__ == "__main__":
    main()
