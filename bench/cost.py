"""CPU cost per no-op task spent by runq itself (issue 10 item 1): a micro-benchmark, not a test.

    .venv/bin/python -m bench.cost                          # both brokers, 20,000 tasks each
    .venv/bin/python -m bench.cost --brokers redis --tasks 50000 --profile /tmp/runq-prof

Wall-clock rates are noisy on a shared machine, CPU time is not (much): this reports CPU
microseconds per task of the measured process only.

- producer: ``noop.delay()`` in a loop in this process (``time.process_time`` around the
  loop, after a warm-up), i.e. building the message, the broker call and its reply.
- worker: one real ``runq worker tests.tasks:app --pool thread`` process; its CPU
  (``/proc/<pid>/stat``, all threads) from idle to the last of N pre-enqueued tasks
  settled, minus its idle rate over the same time. That is claim -> start -> run -> settle;
  the task body is ``return None``.
- redis: the server's own CPU per task (``INFO cpu``) in each phase, for comparison.

``--profile DIR`` also records each measured process with py-spy (``pip install py-spy``)
and prints the functions with the most samples (own time, and with callees).
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (every thread), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def redis_cpu(url: str) -> float:
    if not url.startswith("redis"):
        return 0.0
    import redis

    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Spy:
    """py-spy recording one process, for a profile summary."""

    def __init__(self, pid: int, out: Path | None) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if out is not None:
            spy = Path(sys.executable).parent / "py-spy"
            command = [str(spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "-o", str(out)]
            self.proc = subprocess.Popen([*command, "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # py-spy attaches before the measured phase starts (a benchmark, not a test)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)
            self.proc.wait(30)


def summary(path: Path, top: int = 14) -> str:
    """Own-time and inclusive top functions from py-spy's raw (collapsed) output; idle waits dropped."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    idle = {"wait", "Condition.wait", "Event.wait", "_wait_for_tstate_lock", "select", "Queue.get", "get", "sleep"}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        if not frames or frames[-1].partition(" (")[0] in idle:  # blocked, not working
            continue
        n = int(count)
        total += n
        own[_short(frames[-1])] += n
        for name in {_short(f) for f in frames}:
            inclusive[name] += n
    lines = [f"busy samples: {total}", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("with callees:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top + 10)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for prefix in (str(ROOT) + "/", "/usr/lib/python3", str(Path(sys.executable).parent.parent)):
        where = where.removeprefix(prefix)
    return f"{name} ({where.split('site-packages/')[-1]})"


def producer(url: str, tasks: int, profile: Path | None) -> tuple[float, float]:
    """CPU µs per delay() in this process, and the Redis server's."""
    from tests.tasks import app, noop

    app.purge(None)
    for _ in range(500):
        noop.delay()
    spy = Spy(os.getpid(), profile)
    server = redis_cpu(url)
    start = time.process_time()
    for _ in range(tasks):
        noop.delay()
    spent = time.process_time() - start
    server = redis_cpu(url) - server
    spy.stop()
    return 1e6 * spent / tasks, 1e6 * server / tasks


def worker(url: str, tasks: int, profile: Path | None, pool_args: list[str]) -> tuple[float, float, float]:
    """CPU µs per task of one worker process draining ``tasks`` pre-enqueued no-ops, its idle
    CPU per second, and the Redis server's µs per task."""
    import runq
    from tests.tasks import app

    env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "RUNQ_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "runq", "worker", "tests.tasks:app", "--queues", "cost", *pool_args]
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        while not app.workers():
            time.sleep(0.05)
        time.sleep(1.0)  # start-up done
        idle_from, idle_at = proc_cpu(proc.pid), time.monotonic()
        time.sleep(2.0)
        idle_rate = (proc_cpu(proc.pid) - idle_from) / (time.monotonic() - idle_at)
        spy = Spy(proc.pid, profile)
        before = app.stats().counters["succeeded"]
        server = redis_cpu(url)
        cpu, started = proc_cpu(proc.pid), time.monotonic()
        for start in range(0, tasks, 1000):
            app.enqueue_many([runq.Signature("noop").options(queue="cost")] * min(1000, tasks - start))
        while app.stats().counters["succeeded"] < before + tasks:
            time.sleep(0.02)
        spent = proc_cpu(proc.pid) - cpu - idle_rate * (time.monotonic() - started)
        server = redis_cpu(url) - server
        spy.stop()
        return 1e6 * spent / tasks, idle_rate, 1e6 * server / tasks
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", default="redis,sqlite")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--profile", type=Path, help="directory for py-spy raw profiles (and print summaries)")
    parser.add_argument("--pool", default="--pool thread --concurrency 8", help="worker pool arguments")
    args = parser.parse_args()
    from tests.support.servers import RedisServer

    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for broker in args.brokers.split(","):
            server = RedisServer(Path(tmp)) if broker == "redis" else None
            url = server.url if server else f"sqlite:///{tmp}/cost.db"
            os.environ["RUNQ_URL"] = url
            sys.modules.pop("tests.tasks", None)
            try:
                prof = {k: args.profile / f"{broker}-{k}.txt" if args.profile else None for k in ("p", "w")}
                per_delay, server_p = producer(url, args.tasks, prof["p"])
                per_task, idle, server_w = worker(url, args.tasks, prof["w"], args.pool.split())
            finally:
                if server:
                    server.kill()
            print(f"{broker}: producer {per_delay:.1f} µs CPU per delay()   (redis-server {server_p:.1f} µs)")
            print(
                f"{broker}: worker   {per_task:.1f} µs CPU per task      (redis-server {server_w:.1f} µs;"
                f" idle worker {1e3 * idle:.1f} ms CPU/s subtracted)",
                flush=True,
            )
            for kind, path in prof.items():
                if path is not None and path.exists():
                    print(f"-- py-spy, {broker} {'producer' if kind == 'p' else 'worker'} --\n{summary(path)}")


if __name__ == "__main__":
    main()
