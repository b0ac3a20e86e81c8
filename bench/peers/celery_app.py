"""Celery with Redis as broker and result backend.

Default: ``celery -A bench.peers.celery_app worker`` (prefork pool, concurrency = CPU
count = 2 child processes). Fast: the documented optimisations, ``--pool threads
--without-heartbeat --without-gossip --without-mingle``, two worker processes.
Fire-and-forget tasks are ``ignore_result=True`` (Celery's optimisation guide); the
round-trip task stores its result and ``AsyncResult.get()`` waits on pub/sub.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from .base import DRAIN, IO, SLEEP, Peer, Variant, command, count_completion

URL = os.environ.get("BENCH_REDIS_URL", "redis://invalid:1/0")
app = Celery("bench_celery", broker=URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True


@app.task(name="noop", ignore_result=True)
def noop() -> None:
    count_completion()


@app.task(name="sleep", ignore_result=True)
def sleep() -> None:
    time.sleep(SLEEP)
    count_completion()


@app.task(name="echo")
def echo() -> int:
    count_completion()
    return 1


FAST = ("--without-heartbeat", "--without-gossip", "--without-mingle")


class CeleryPeer(Peer):
    name = "celery"
    dist = "celery"
    variants = (
        Variant("", "`celery worker` (prefork, concurrency 2 = CPU count); W4: `--pool threads --concurrency 50` x2"),
        Variant(
            "threads",
            "`celery worker --pool threads --without-heartbeat --without-gossip --without-mingle` x2",
            frozenset({"W2", "W3", "W4"}),
        ),
    )

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        base = command("celery", "-A", "bench.peers.celery_app", "worker", "--loglevel", "WARNING")
        fast = list(FAST) if variant.name else []
        if kind == IO:
            return [[*base, "--pool", "threads", "--concurrency", "50", *fast] for _ in range(2)]
        if not variant.name:
            return [base]  # prefork: 2 child processes run the tasks
        return [[*base, "--pool", "threads", *fast] for _ in range(2 if kind == DRAIN else 1)]

    def enqueue(self, kind: str, n: int) -> None:
        delay = {"noop": noop, "sleep": sleep}[kind].delay
        for _ in range(n):
            delay()

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        echo.delay().get(timeout=60)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            echo.delay().get(timeout=timeout)
            samples.append(time.perf_counter() - started)
        return samples


PEER = CeleryPeer
