"""Huey with ``SqliteHuey``, on ``huey.db`` in the run's temporary directory (``BENCH_SQLITE_DIR``).

Consumers as in ``huey_app``: W2 ``huey_consumer … -k process -w 2``, W3 one default consumer,
W4 two ``-k thread -w 50`` consumers; ``-q`` keeps its per-task INFO lines off.

Huey's SQLite storage has no notification: its consumer polls the queue (``-d``, first
interval 0.1 s, x1.15 per empty look up to ``-m`` 10 s) and ``Result.get(blocking=True)``
polls the result (first 50 ms, x``backoff`` 1.15 up to ``max_delay`` 1 s). The fast variant
sets the documented knobs to their fastest: ``SqliteHuey(fsync=False)``, consumer
``-d 0.001 -m 0.001`` and ``get(blocking=True, max_delay=0.001)``: one look every millisecond.
"""

from __future__ import annotations

import os
import time

from huey import SqliteHuey

from .base import DRAIN, IO, SLEEP, Peer, Variant, command, count_completion
from .sqlite_dir import remove, sqlite_file

FAST_ENV = "BENCH_HUEY_FAST"
FAST_POLL = 0.001
PATH = sqlite_file("huey.db")


def storage(fast: bool) -> dict[str, object]:
    """``SqliteHuey``'s storage settings: its defaults (WAL; SQLite's ``synchronous`` default,
    FULL: a sync per commit), or ``fsync=False`` (``synchronous=OFF``)."""
    return {"filename": str(PATH), "fsync": False if fast else None}  # None: Huey's default


huey = SqliteHuey("bench", **storage(os.environ.get(FAST_ENV) == "1"))


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


class HueySqlitePeer(Peer):
    name = "huey"
    dist = "huey"
    variants = (
        Variant(
            "",
            "`SqliteHuey(filename=…)` (WAL, SQLite's default `synchronous=FULL`); `huey_consumer -k process -w 2 -q`;"
            " W3 one default consumer (`-d 0.1 -m 10`), `get(blocking=True)` (50 ms x1.15 up to 1 s);"
            " W4 `-k thread -w 50` x2",
            trips=50,
        ),
        Variant(
            "fast",
            f"`SqliteHuey(fsync=False)` (`synchronous=OFF`); consumers as above plus `-d {FAST_POLL} -m {FAST_POLL}`"
            f" (a look at the queue every ms when idle); `get(blocking=True, max_delay={FAST_POLL})`",
            env={FAST_ENV: "1"},
        ),
    )

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        base = command("huey_consumer", "bench.peers.huey_sqlite_app.huey", "-q")
        if variant.env.get(FAST_ENV):
            base += ["-d", str(FAST_POLL), "-m", str(FAST_POLL)]
        if kind == DRAIN:
            return [[*base, "-k", "process", "-w", "2"]]
        if kind == IO:
            return [[*base, "-k", "thread", "-w", "50"] for _ in range(2)]
        return [base]

    def reset(self, variant: Variant) -> None:
        """A new, empty database file, opened with the variant's storage settings."""
        huey.storage.close()
        remove(PATH)
        huey.storage_kwargs.update(storage(bool(variant.env.get(FAST_ENV))))
        huey.storage = huey.create_storage()

    def enqueue(self, kind: str, n: int) -> None:
        fn = {"noop": noop, "sleep": sleep}[kind]
        for _ in range(n):
            fn()

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        wait = {"max_delay": FAST_POLL} if variant.env.get(FAST_ENV) else {}
        echo().get(blocking=True, timeout=60, **wait)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            if echo().get(blocking=True, timeout=timeout, **wait) != 1:
                raise RuntimeError("huey round trip failed")
            samples.append(time.perf_counter() - started)
        return samples


PEER = HueySqlitePeer
