"""Huey with ``RedisHuey``. Default consumer ``huey_consumer bench.peers.huey_app.huey``;
2 processes as ``-k process -w 2``; W4 two ``-k thread -w 50`` consumers. ``-q`` keeps its
per-task INFO lines off. Round trip: ``Result.get(blocking=True)`` (polls with back-off);
the fast variant is ``notify_result=True`` (BLPOP on a notification key).
"""

from __future__ import annotations

import os
import time

from huey import RedisHuey

from .base import DRAIN, IO, SLEEP, Peer, Variant, command, count_completion

URL = os.environ.get("BENCH_REDIS_URL", "redis://invalid:1/0")
NOTIFY = os.environ.get("BENCH_HUEY_NOTIFY") == "1"
huey = RedisHuey("bench", url=URL, notify_result=NOTIFY)


@huey.task()
def noop() -> None:
    count_completion()


@huey.task()
def sleep() -> None:
    time.sleep(SLEEP)
    count_completion()


@huey.task()
def echo() -> int:
    count_completion()
    return 1


class HueyPeer(Peer):
    name = "huey"
    dist = "huey"
    variants = (
        Variant("", "`huey_consumer -k process -w 2 -q`; W3 one default consumer; W4 `-k thread -w 50` x2", trips=50),
        Variant("notify_result", "`RedisHuey(notify_result=True)`", frozenset({"W3"}), env={"BENCH_HUEY_NOTIFY": "1"}),
    )

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        base = command("huey_consumer", "bench.peers.huey_app.huey", "-q")
        if kind == DRAIN:
            return [[*base, "-k", "process", "-w", "2"]]
        if kind == IO:
            return [[*base, "-k", "thread", "-w", "50"] for _ in range(2)]
        return [base]

    def reset(self, variant: Variant) -> None:
        huey.storage.notify_result = bool(variant.env.get("BENCH_HUEY_NOTIFY"))

    def enqueue(self, kind: str, n: int) -> None:
        fn = {"noop": noop, "sleep": sleep}[kind]
        for _ in range(n):
            fn()

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        echo().get(blocking=True, timeout=60)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            if echo().get(blocking=True, timeout=timeout) != 1:
                raise RuntimeError("huey round trip failed")
            samples.append(time.perf_counter() - started)
        return samples


PEER = HueyPeer
