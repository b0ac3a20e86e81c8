"""Dramatiq with its Redis broker: ``dramatiq bench.peers.dramatiq_app --processes 2 --threads 8``
(the defaults on this 2-core machine, written out); W4 ``--threads 50``. Results middleware
with the Redis backend, used by the round-trip actor only (``store_results=True``);
``Message.get_result(block=True)`` blocks on Redis.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from .base import DRAIN, IO, SLEEP, Peer, Variant, command, count_completion

URL = os.environ.get("BENCH_REDIS_URL", "redis://invalid:1/0")
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop() -> None:
    count_completion()


@dramatiq.actor(queue_name="bench")
def sleep() -> None:
    time.sleep(SLEEP)
    count_completion()


@dramatiq.actor(queue_name="bench", store_results=True)
def echo() -> int:
    count_completion()
    return 1


class DramatiqPeer(Peer):
    name = "dramatiq"
    dist = "dramatiq"
    variants = (Variant("", "`dramatiq --processes 2 --threads 8` (W3: 1 process; W4: `--threads 50`)"),)

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        processes = "2" if kind in (DRAIN, IO) else "1"
        threads = "50" if kind == IO else "8"
        return [command("dramatiq", "bench.peers.dramatiq_app", "--processes", processes, "--threads", threads)]

    def enqueue(self, kind: str, n: int) -> None:
        send = {"noop": noop, "sleep": sleep}[kind].send
        for _ in range(n):
            send()

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        echo.send().get_result(block=True, timeout=60_000)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            echo.send().get_result(block=True, timeout=int(timeout * 1000))
            samples.append(time.perf_counter() - started)
        return samples

    def close(self) -> None:
        broker.close()


PEER = DramatiqPeer
