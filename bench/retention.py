"""``python -m bench.retention``: the bytes a broker keeps per finished no-op task (issue 23 part 4).

python -m bench.retention                          # every broker, 20,000 tasks, 3 rounds
python -m bench.retention --brokers redis --tasks 20000 --rounds 1 --detail

Each round runs on a fresh broker (a private redis-server, a private PostgreSQL database on
``RUNQ_BENCH_POSTGRES``, a temporary SQLite file), through the broker API directly (enqueue,
claim, settle ``succeeded`` with the ``null`` result a worker sends for ``None``), so it
measures what the broker stores, not a worker. It first finishes ``--warm`` tasks (the
latency-sample list and the throughput hash reach their caps, the schema exists), then
measures the store before, with ``--tasks`` queued, and after they all finished:

* Redis: ``INFO memory`` ``used_memory``; with ``--detail``, ``MEMORY USAGE`` of each of the
  queue's keys and one finished record as stored.
* PostgreSQL: ``pg_total_relation_size`` of every runq table (heap, TOAST, indexes), as left
  (dead row versions included: what autovacuum reuses) and after ``VACUUM FULL`` (the floor).
* SQLite: the database file after ``PRAGMA wal_checkpoint(TRUNCATE)``, as left and after ``VACUUM``.

Bytes per finished task = (after - before) / tasks; the median of the rounds is printed.

``--expiry SECONDS``: whether deleting expired tasks keeps up instead. One process finishes
tasks with ``result_ttl=1`` as fast as it can for SECONDS, then counts the tasks stored past
their expiry (a short result_ttl bounds nothing if expiry falls behind).
Run it under the shared lock: ``flock /tmp/runq-bench.lock .venv/bin/python -m bench.retention``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import redis

import runq
from runq.brokers.base import Broker
from runq.models import Message, Outcome, new_task_id

from .redis_server import RedisServer

ADMIN_URL = os.environ.get("RUNQ_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
QUEUE = "default"
# An open broker: its App, what its store takes now (name -> bytes), how many tasks it keeps past their expiry.
Opened = tuple[runq.App, Callable[[], dict[str, int]], Callable[[], int]]
BATCH = 1000


def run_tasks(broker: Broker, n: int, finish: bool = True) -> None:
    """Enqueue ``n`` no-op tasks; with ``finish``, claim and settle them all as succeeded (``null``)."""
    for start in range(0, n, BATCH):
        messages = [Message(id=new_task_id(QUEUE), name="noop", queue=QUEUE) for _ in range(min(BATCH, n - start))]
        broker.enqueue(messages, 86400.0)
    if finish:
        finish_all(broker)


def finish_all(broker: Broker) -> None:
    while claims := broker.claim([QUEUE], "bench-retention", BATCH, 300.0):
        outcomes = [Outcome(c.id, c.token, "succeeded", result="null", runtime=0.0001) for c in claims]
        assert all(broker.settle(outcomes)), "a settle was refused"


def expiry(broker: Broker, seconds: float, count_expired: Callable[[], int]) -> str:
    """Finish tasks with result_ttl=1 for ``seconds``; the rate and the expired tasks left stored."""
    start, done = time.monotonic(), 0
    while time.monotonic() - start < seconds:
        broker.enqueue([Message(new_task_id(QUEUE), "noop", QUEUE, result_ttl=1.0) for _ in range(500)], 60.0)
        while claims := broker.claim([QUEUE], "bench-retention", 500, 300.0):
            broker.settle([Outcome(c.id, c.token, "succeeded", result="null", result_ttl=1.0) for c in claims])
            done += len(claims)
    elapsed = time.monotonic() - start
    return f"{done:,} tasks in {elapsed:.0f} s ({done / elapsed:,.0f}/s); stored past their expiry: {count_expired():,}"


def measure(store: Callable[[], dict[str, int]], broker: Broker, args: argparse.Namespace) -> dict[str, float]:
    run_tasks(broker, args.warm)
    before = store()
    run_tasks(broker, args.tasks, finish=False)
    queued = store()
    finish_all(broker)
    after = store()
    figures = {f"queued {k}": (queued[k] - before[k]) / args.tasks for k in before}
    figures |= {f"finished {k}": (after[k] - before[k]) / args.tasks for k in before}
    return figures


@contextmanager
def redis_broker(args: argparse.Namespace) -> Iterator[Opened]:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            app = runq.App(server.url)
            client: Any = redis.Redis.from_url(server.url)

            def store() -> dict[str, int]:
                return {"used_memory": int(client.info("memory")["used_memory"])}

            def expired() -> int:
                now = client.time()
                return int(client.zcount(f"runq:{{{QUEUE}}}:expiring", "-inf", now[0] + now[1] / 1e6))

            yield app, store, expired
            if args.detail:
                redis_detail(client, args.tasks + args.warm)
            app.close()
        finally:
            server.kill()


def redis_detail(client: Any, finished: int) -> None:
    """Where the bytes go: each key of the queue, per finished task, and one record as stored."""
    print(f"  Redis keys (MEMORY USAGE ... SAMPLES 0), per finished task over {finished:,}:")
    for key in sorted(k.decode() for k in client.keys("runq:*")):
        usage = client.memory_usage(key, samples=0) or 0
        print(f"    {key:40} {usage:>12,} B  {usage / finished:8.1f} B/task")
    tasks_key = f"runq:{{{QUEUE}}}:tasks"
    field, record = next(iter(client.hscan(tasks_key, count=10)[1].items()))
    print(f"  a finished record ({len(record)} bytes of JSON, id {len(field)} bytes): {record.decode()}")


@contextmanager
def postgres_broker(args: argparse.Namespace) -> Iterator[Opened]:
    import psycopg

    name = f"runq_retention_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        with psycopg.connect(url, autocommit=True) as db:

            def sizes(full: bool = False) -> dict[str, int]:
                tables = [
                    row[0]
                    for row in db.execute(
                        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = 'runq' AND c.relkind = 'r'"
                    )
                ]
                if full:
                    for table in tables:
                        db.execute(f"VACUUM FULL {table}")
                total = sum(int(db.execute(f"SELECT pg_total_relation_size('{t}')").fetchone()[0]) for t in tables)  # type: ignore[index]
                return {"bytes" if not full else "bytes after VACUUM FULL": total}

            def store() -> dict[str, int]:
                return sizes() | sizes(full=True)

            def expired() -> int:
                row = db.execute("SELECT count(*) FROM runq.tasks WHERE expires_at < extract(epoch FROM now())")
                return int(row.fetchone()[0])  # type: ignore[index]

            app = runq.App(url)
            yield app, store, expired
            if args.detail:
                for row in db.execute(
                    "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE n.nspname = 'runq' ORDER BY 2 DESC LIMIT 12"
                ):
                    print(f"    {row[0]:32} {row[1]:>12,} B")
            app.close()
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def sqlite_broker(args: argparse.Namespace) -> Iterator[Opened]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runq.db"
        app = runq.App(f"sqlite:///{path}")

        def size(vacuum: bool) -> int:
            with sqlite3.connect(path) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                if vacuum:
                    db.execute("VACUUM")
            return path.stat().st_size

        def store() -> dict[str, int]:
            return {"file bytes": size(False), "file bytes after VACUUM": size(True)}

        def expired() -> int:
            with sqlite3.connect(path) as db:
                row = db.execute("SELECT count(*) FROM runq_tasks WHERE expires_at < ?", (time.time(),)).fetchone()
                return int(row[0])

        yield app, store, expired
        app.close()


BROKERS: dict[str, Callable[[argparse.Namespace], AbstractContextManager[Opened]]] = {
    "redis": redis_broker,
    "postgres": postgres_broker,
    "sqlite": sqlite_broker,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default=",".join(BROKERS), help=f"comma-separated, of: {','.join(BROKERS)}")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks measured [20000]")
    parser.add_argument("--warm", type=int, default=5_000, help="tasks finished before measuring [5000]")
    parser.add_argument("--rounds", type=int, default=3, help="fresh brokers per figure; the median is shown [3]")
    parser.add_argument("--detail", action="store_true", help="where the bytes go (Redis keys, PostgreSQL relations)")
    parser.add_argument("--expiry", type=float, metavar="SECONDS", help="measure whether expiry keeps up instead")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not args.expiry:
        print(f"bytes kept per task: {args.tasks:,} no-op tasks after {args.warm:,} warm-up, median of {args.rounds}")
    for kind in args.brokers.split(","):
        if args.expiry:
            with BROKERS[kind](args) as (app, _, expired):
                print(f"{kind:9} expiry: {expiry(app.broker, args.expiry, expired)}")
            continue
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            with BROKERS[kind](args) as (app, store, _):
                rounds.append(measure(store, app.broker, args))
        for figure in rounds[0]:
            values = [r[figure] for r in rounds]
            spread = f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else ""
            print(f"{kind:9} {figure:34} {statistics.median(values):8.1f} B/task{spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
