"""Drain benchmark: N pre-enqueued no-op tasks, K worker processes, time to the last completion.

    python bench/drain.py --url sqlite:////tmp/drain.db --tasks 10000 --workers 2 --runs 3

Prints each run and the median. The clock starts when the workers are launched
(start-up included) and stops when the broker counts every task succeeded.
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


def reset(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        import redis

        redis.Redis.from_url(url).flushdb()


def one_run(url: str, tasks: int, workers: int, worker_args: list[str]) -> float:
    reset(url)
    app = runq.App(url)
    for start in range(0, tasks, 5000):
        app.enqueue_many([runq.Signature("noop")] * min(5000, tasks - start))
    env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "RUNQ_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "runq", "worker", "tests.tasks:app", *worker_args]
    started = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, cwd=ROOT) for _ in range(workers)]
    try:
        while app.stats().counters["succeeded"] < tasks:
            time.sleep(0.01)
        return time.perf_counter() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="sqlite:////tmp/runq-drain.db")
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("worker_args", nargs="*", default=["--pool", "thread", "--concurrency", "8"])
    args = parser.parse_args()
    rates = []
    for run in range(args.runs):
        seconds = one_run(args.url, args.tasks, args.workers, args.worker_args)
        rates.append(args.tasks / seconds)
        print(f"run {run + 1}: {args.tasks} tasks in {seconds:.2f}s = {rates[-1]:,.0f} tasks/s", flush=True)
    print(f"median {statistics.median(rates):,.0f} tasks/s (min {min(rates):,.0f}, max {max(rates):,.0f})")


if __name__ == "__main__":
    main()
