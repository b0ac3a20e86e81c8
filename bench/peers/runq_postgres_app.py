"""runq on its PostgreSQL broker: ``runq worker runq.cli.bench:app --pool thread --url postgresql://...``.

The same adapter as ``runq_app`` (same tasks, same worker command, concurrency 8; W4 50),
pointed at the private benchmark database (``BENCH_PG_URL``, set by ``python -m bench.postgres``).
"""

from __future__ import annotations

import psycopg

import runq
from runq.brokers.postgres import postgres_conninfo
from runq.cli import bench as rb

from .base import Variant
from .pg import postgres_url
from .runq_app import RunqPeer


class RunqPostgresPeer(RunqPeer):
    name = "runq"
    dist = "runq"
    variants = (
        Variant(
            "",
            "`runq worker runq.cli.bench:app --pool thread --url postgresql://…` x2 (concurrency 8 each;"
            " W4 50); `delay()` / `enqueue_many`; `result()` waits on LISTEN/NOTIFY",
        ),
    )

    def __init__(self) -> None:  # RunqPeer's, on the PostgreSQL URL instead of the Redis one
        self.url = postgres_url()
        self.app = runq.App(self.url)
        self.tasks = {"noop": rb.bound(self.app, "bench.noop"), "sleep": rb.bound(self.app, "bench.sleep")}
        self.echo = rb.bound(self.app, "bench.echo")

    def reset(self, variant: Variant) -> None:
        """Empty runq's tables (the schema stays: workers and producers reuse it)."""
        self.app.broker.ping()  # creates the schema on the first run
        conninfo, schema = postgres_conninfo(self.url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            tables = ", ".join(f'"{schema}".{t}' for t in ("tasks", "counters", "counter_deltas", "workers", "deps"))
            conn.execute(f"TRUNCATE {tables}")


PEER = RunqPostgresPeer
