"""Throughput per shard: the same workers drain the same tasks from a 1-master and a 3-master
private Redis Cluster (no replicas), and from one plain Redis for reference.

    flock /tmp/runq-bench.lock .venv/bin/python -m bench.shards --tasks 20000 --workers 2 --runs 3

Tasks are no-ops spread over three queues whose slots sit on three different masters of the
3-master cluster (on the 1-master cluster they share its one master). The clock starts when the
workers are launched and stops when every task has succeeded. Each master's CPU time
(``INFO cpu``) is read before and after, giving Redis CPU per task: the figure that bounds
a shard (one Redis core each), whatever the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

import runq
from runq.brokers.redis import queue_keys
from tests.support.servers import RedisCluster, RedisServer

ROOT = Path(__file__).resolve().parent.parent


def _queues(cluster: RedisCluster | None) -> list[str]:
    """Three queue names on three different masters (or any three on one node)."""
    if cluster is None or len(cluster.masters()) == 1:
        return ["q0", "q1", "q2"]
    chosen: dict[int, str] = {}
    for i in range(500):
        chosen.setdefault(cluster.node_of(queue_keys(f"shard-{i}").pending).port, f"shard-{i}")
    return list(chosen.values())[:3]


def _cpu(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            info: dict[str, Any] = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def one_run(url: str, ports: list[int], queues: list[str], tasks: int, workers: int) -> tuple[float, float]:
    """Seconds to drain ``tasks`` with ``workers`` processes, and Redis CPU µs per task."""
    app = runq.App(url)
    for start in range(0, tasks, 3000):
        batch = [runq.Signature("noop").options(queue=queues[i % 3]) for i in range(start, min(tasks, start + 3000))]
        app.enqueue_many(batch)
    env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "RUNQ_LOG_LEVEL": "WARNING"}
    args = ["-Q", ",".join(queues), "--pool", "thread", "--concurrency", "8"]
    cpu = _cpu(ports)
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "runq", "worker", "tests.tasks:app", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    try:
        while sum(q.succeeded for q in app.stats().queues.values()) < tasks:
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        app.close()
    return elapsed, (_cpu(ports) - cpu) * 1e6 / tasks


def measure(kind: str, tasks: int, workers: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="runq-shards-") as directory:
        cluster = server = None
        if kind == "redis":
            server = RedisServer(Path(directory))
            url, ports = server.url, [server.port]
        else:
            cluster = RedisCluster(Path(directory), masters=int(kind[0]), replicas=0)
            url, ports = cluster.url, [node.port for node in cluster.masters()]
        queues = _queues(cluster)
        results = []
        try:
            for _ in range(runs):
                for port in ports:
                    with redis.Redis(port=port) as client:
                        client.flushall()
                results.append(one_run(url, ports, queues, tasks, workers))
        finally:
            (server or cluster).kill()  # type: ignore[union-attr]
    rates = sorted(tasks / seconds for seconds, _ in results)
    cpu = statistics.median(c for _, c in results)
    print(
        f"{kind:>10}: {statistics.median(rates):8.0f} tasks/s median of {runs} ({rates[0]:.0f}-{rates[-1]:.0f});"
        f" Redis CPU {cpu:.1f} µs/task (all masters)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default="redis,1-master,3-master")
    options = parser.parse_args()
    for kind in options.kinds.split(","):
        measure(kind, options.tasks, options.workers, options.runs)


if __name__ == "__main__":
    main()
