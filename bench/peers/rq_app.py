"""RQ: ``rq worker`` (forks a work horse per job); fast: ``--worker-class rq.SimpleWorker``
(no fork). Bulk: ``Queue.enqueue_many`` (one pipeline). Round trip: ``Job.latest_result(timeout=)``
(a blocking stream read). RQ runs one job at a time per worker: W4 is 2 x 1, not 2 x 50.
"""

from __future__ import annotations

import time

from redis import Redis
from rq import Queue

from .base import DRAIN, IO, SLEEP, Peer, Variant, command, count_completion, redis_url


def noop() -> None:
    count_completion()


def sleep() -> None:
    time.sleep(SLEEP)
    count_completion()


def echo() -> int:
    count_completion()
    return 1


class RQPeer(Peer):
    name = "rq"
    dist = "rq"
    has_bulk = True
    variants = (
        Variant(
            "",
            "`rq worker` x2 (fork per job: W2 and W4 with 1,000 tasks, 20,000 would take ~15 min a run); "
            "bulk: `enqueue_many`; W4 is 2 x 1 (RQ has no in-process concurrency)",
            cap=1_000,
        ),
        Variant(
            "SimpleWorker", "`rq worker --worker-class rq.SimpleWorker` x2 (no fork)", frozenset({"W2", "W3", "W4"})
        ),
    )

    def __init__(self) -> None:
        self.url = redis_url()
        self.redis = Redis.from_url(self.url)
        self.queue = Queue("bench", connection=self.redis)

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        base = command("rq", "worker", "bench", "--url", self.url, "--quiet")
        if variant.name:
            base += ["--worker-class", "rq.SimpleWorker"]
        return [base for _ in range(2 if kind in (DRAIN, IO) else 1)]

    def enqueue(self, kind: str, n: int) -> None:
        fn = {"noop": noop, "sleep": sleep}[kind]
        enqueue = self.queue.enqueue
        for _ in range(n):
            enqueue(fn)

    def enqueue_bulk(self, kind: str, n: int, batch: int) -> None:
        fn = {"noop": noop, "sleep": sleep}[kind]
        for start in range(0, n, batch):
            self.queue.enqueue_many([Queue.prepare_data(fn) for _ in range(min(batch, n - start))])

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        self._trip(60)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            self._trip(timeout)
            samples.append(time.perf_counter() - started)
        return samples

    def _trip(self, timeout: float) -> None:
        job = self.queue.enqueue(echo)
        result = job.latest_result(timeout=int(timeout))
        if result is None or result.return_value != 1:
            raise RuntimeError(f"rq round trip failed: {result!r}")

    def close(self) -> None:
        self.redis.close()


PEER = RQPeer
