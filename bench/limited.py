"""Concurrency-limited drain (issue 21): N pre-enqueued no-op tasks over K keys, each key
limited to L runs at once (``concurrency=runq.Limit(L, key="key")``), W worker processes;
time to the last completion. With ``--baseline`` each run is paired with the same drain
without the limit (interleaved), so the cost of the limit reads as a ratio.

    python bench/limited.py --url redis://127.0.0.1:6379/9 --runs 3 --baseline   # EMPTIES that database
    python bench/limited.py --url sqlite:////tmp/runq-limited.db --tasks 2000 --keys 20 --runs 1

Defaults: 20,000 tasks, 100 keys, limit 8, 2 workers of 16 threads. ``--order blocks`` (the
default) enqueues each key's tasks together, so the head of the queue is one key and the
limit binds hard (the claims hold most of the backlog, then release it seat by seat);
``round-robin`` interleaves the keys, so with fewer slots than keys the limit rarely binds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import runq

ROOT = Path(__file__).resolve().parent.parent
app = runq.App()  # the workers' App: `runq worker bench.limited:app` (RUNQ_URL names the broker)


@app.task(name="keyed", retries=0)
def keyed(key: str) -> None:
    """A no-op with the argument the limit counts by."""


def reset(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif url.startswith("redis://"):
        import redis

        redis.Redis.from_url(url).flushdb()
    else:
        raise SystemExit(f"bench/limited.py empties its broker first: sqlite:/// or redis:// only, got {url}")


def keys_in_order(tasks: int, keys: int, order: str) -> list[str]:
    if order == "round-robin":
        return [f"k{i % keys}" for i in range(tasks)]
    per_key = -(-tasks // keys)
    return [f"k{i // per_key}" for i in range(tasks)]


def one_run(url: str, args: argparse.Namespace, limit: int | None) -> float:
    reset(url)
    producer = runq.App(url)
    options = {"concurrency": runq.Limit(limit, key="key")} if limit else {}
    calls = [
        runq.Signature("keyed", kwargs={"key": key}).options(**options)
        for key in keys_in_order(args.tasks, args.keys, args.order)
    ]
    for start in range(0, len(calls), 5000):
        producer.enqueue_many(calls[start : start + 5000])
    env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "RUNQ_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "runq", "worker", "bench.limited:app", *args.worker_args]
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(args.workers)]
    try:
        while producer.stats().counters["succeeded"] < args.tasks:
            time.sleep(0.01)
        return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="sqlite:////tmp/runq-limited.db")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--order", choices=("blocks", "round-robin"), default="blocks")
    parser.add_argument("--baseline", action="store_true", help="also drain without the limit, interleaved")
    parser.add_argument("worker_args", nargs="*", default=["--pool", "thread", "--concurrency", "16"])
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"limited": [], "unlimited": []}
    for run in range(args.runs):
        for label, limit in (("limited", args.limit), ("unlimited", None)):
            if limit is None and not args.baseline:
                continue
            seconds = one_run(args.url, args, limit)
            rates[label].append(args.tasks / seconds)
            print(
                f"run {run + 1} {label}: {args.tasks} tasks in {seconds:.2f}s = {rates[label][-1]:,.0f}/s", flush=True
            )
    for label, found in rates.items():
        if found:
            spread = f"(min {min(found):,.0f}, max {max(found):,.0f})"
            print(f"{label}: median {statistics.median(found):,.0f} tasks/s {spread}")
    if rates["unlimited"]:
        ratio = statistics.median(rates["limited"]) / statistics.median(rates["unlimited"])
        print(f"limited / unlimited: {ratio:.2f}")


if __name__ == "__main__":
    main()
