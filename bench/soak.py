"""``python -m bench.soak``: real workers, random SIGKILLs (and SIGSTOPs), a ledger of every run.

    python -m bench.soak --broker redis --tasks 40000 --seconds 40            # chaos, then the drain
    python -m bench.soak --broker postgres --variants default,strict --runs 3  # duplicates per kill, both settings
    python -m bench.soak --broker sqlite --limited --tasks 20000 --seconds 30  # concurrency-limited tasks
    python -m bench.soak --broker redis --throughput --tasks 20000 --runs 3 --variants default,strict

A soak starts ``--workers`` real ``runq worker`` processes and enqueues ``--tasks`` tasks spread
evenly over ``--seconds`` (``--upfront``: all before the workers start). Every
``--fault-every`` seconds on average (uniform between half and one and a half times that) it
SIGKILLs a random worker and starts a new one (only while tasks remain: the faults stop early
when everything is done); with ``--stop-share P`` that fault is instead,
with probability P, a SIGSTOP for ``--stop-seconds`` (past the lease: its tasks are taken
over) and a SIGCONT. After ``--seconds`` the faults stop and the soak waits for the drain,
then reads the ledger (:mod:`bench.ledger`: each run's start and end written by the task, each
accepted outcome written by a middleware) and reports: lost (must be 0), duplicates, kills,
duplicates per kill, and where each duplicate came from.

``--limited``: the tasks are concurrency-limited (90 % ``runq.Limit(--limit, key="key")`` over
``--keys`` keys, 10 % ``concurrency=--limit`` for the whole task) and run ``--task-seconds``
each; the ledger must show no key ever running more than ``--limit`` at once, and after the
drain every seat must be free: ``--limit`` probe runs per key, enqueued together, all start
before any of them ends.

``--throughput``: no faults, no ledger: ``--tasks`` tasks (no-ops unless ``--task-seconds``)
enqueued, then drained; tasks/s
from the workers' launch to the last completion (total) and between the 10 % and 90 % marks
(steady).

``--variants`` compares worker settings, interleaved run by run: ``default``, ``strict``
(``--settle-batch 0 --settle-interval 0``) or ``batch=N,interval=S``. Each broker is private
(a fresh SQLite file, a private redis-server / valkey-server / 3-master cluster, a private
PostgreSQL database on ``RUNQ_BENCH_POSTGRES``), emptied before every run. Run it under the
shared lock: ``flock /tmp/runq-bench.lock python -m bench.soak ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runq

from .ledger import LEDGER_ENV, Fault, analyse, note, peak_overlap, read, refusals

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "soak"
RETRIES = 1000  # a lost run (WorkerLost) uses an attempt: a task must outlive every kill that takes it
BROKERS = ("sqlite", "redis", "valkey", "cluster", "postgres")
ADMIN_URL = os.environ.get("RUNQ_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
VARIANTS = {"default": (), "strict": ("--settle-batch", "0", "--settle-interval", "0")}

# -- the workers' App: `runq worker bench.soak:app` ------------------------------------------------

app = runq.App()


class _Settled(runq.Middleware):
    """Notes each outcome the broker accepted, in the worker, after the settle; and each run the
    worker stopped because its claim was gone (``on_finish`` hears those as ``cancelled``: the
    soak cancels nothing itself)."""

    def on_finish(self, task: runq.TaskContext, outcome: runq.TaskOutcome) -> None:
        note("stopped" if outcome.status == "cancelled" else "settled", task.id, task.attempt)


app.add_middleware(_Settled())


def _run(key: str | None, seconds: float, probe: bool) -> None:
    task = runq.current()
    note("start", task.id, task.attempt, key, probe)
    if seconds:
        time.sleep(seconds)
    note("end", task.id, task.attempt, key, probe)


@app.task(name="soak.work", queue=QUEUE, retries=RETRIES)
def work(seconds: float = 0.0) -> None:
    _run(None, seconds, False)


@app.task(name="soak.keyed", queue=QUEUE, retries=RETRIES)
def keyed(key: str, seconds: float = 0.0, probe: bool = False) -> None:
    """Limited per ``key`` (the producer passes ``concurrency=runq.Limit(L, key="key")``)."""
    _run(key, seconds, probe)


@app.task(name="soak.whole", queue=QUEUE, retries=RETRIES)
def whole(seconds: float = 0.0, probe: bool = False) -> None:
    """Limited as a whole (the producer passes ``concurrency=L``)."""
    _run("*whole", seconds, probe)


# -- brokers -----------------------------------------------------------------------------------


@contextmanager
def brokers(kind: str, directory: Path) -> Iterator[Callable[[], str]]:
    """A private broker of ``kind`` for this soak; yields a function that empties it and returns its URL."""
    sys.path.insert(0, str(ROOT))  # tests.support: the servers the tests use
    if kind == "sqlite":
        count = iter(range(1_000_000))
        yield lambda: f"sqlite:///{directory / f'soak-{next(count)}.db'}"
    elif kind in ("redis", "valkey"):
        from tests.support.servers import RedisServer, valkey_binary

        server = RedisServer(directory / kind, binary=valkey_binary() if kind == "valkey" else None)

        def flushed() -> str:
            server.flush()
            return server.url

        try:
            yield flushed
        finally:
            server.kill()
    elif kind == "cluster":
        from tests.support.servers import RedisCluster

        cluster = RedisCluster(directory / "cluster")

        def flushed_cluster() -> str:
            cluster.flush()
            return cluster.url

        try:
            yield flushed_cluster
        finally:
            cluster.kill()
    elif kind == "postgres":
        from .postgres import private_database

        with private_database(ADMIN_URL) as database:
            yield lambda: f"{database}?schema=soak_{secrets.token_hex(4)}"
    else:
        raise SystemExit(f"unknown broker {kind!r}; choose from {', '.join(BROKERS)}")


# -- the fleet ---------------------------------------------------------------------------------


class Fleet:
    """``--workers`` real worker processes; a killed one is replaced at once."""

    def __init__(self, command: list[str], env: dict[str, str], logs: Path, size: int) -> None:
        self.command, self.env, self.logs = command, env, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopped: dict[int, tuple[float, float]] = {}  # pid -> (stopped at, when to SIGCONT it)
        self.faults: list[Fault] = []
        self.pids: set[int] = set()  # every worker that ever ran
        for _ in range(size):
            self.start()

    def start(self) -> None:
        with open(self.logs / f"worker-{len(self.pids)}.log", "ab") as out:
            proc = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.pids.add(proc.pid)

    def fault(self, rng: random.Random, stop_share: float, stop_seconds: float) -> None:
        awake = [proc for proc in self.procs if proc.pid not in self.stopped and proc.poll() is None]
        if not awake:
            return
        proc = rng.choice(awake)
        if rng.random() < stop_share:
            proc.send_signal(signal.SIGSTOP)
            self.stopped[proc.pid] = (time.time(), time.time() + stop_seconds)
            return
        proc.kill()
        at = time.time()
        proc.wait()
        self.procs.remove(proc)
        self.faults.append(Fault(proc.pid, "kill", at, at))
        self.start()

    def wake(self, everyone: bool = False) -> None:
        """SIGCONT the workers whose stop is over (all of them with ``everyone``)."""
        now = time.time()
        for proc in self.procs:
            stop = self.stopped.get(proc.pid)
            if stop is not None and (everyone or stop[1] <= now):
                proc.send_signal(signal.SIGCONT)
                del self.stopped[proc.pid]
                self.faults.append(Fault(proc.pid, "stop", stop[0], now))

    def close(self) -> None:
        self.wake(everyone=True)
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        crashed = [str(proc.pid) for proc in self.procs if proc.returncode not in (0, -signal.SIGTERM)]
        if crashed:
            print(f"  worker(s) {', '.join(crashed)} exited badly: see {self.logs}", file=sys.stderr)


# -- one soak ----------------------------------------------------------------------------------


@dataclass
class Result:
    variant: str
    seconds: float  # chaos, then drain
    drain: float  # from the end of the chaos to the last task finished
    kills: int
    stops: int
    analysis: dict[str, Any]
    limit: dict[str, Any] = field(default_factory=dict)

    @property
    def per_kill(self) -> float:
        return self.analysis["duplicates"] / self.kills if self.kills else 0.0


def signatures(args: argparse.Namespace) -> list[runq.Signature]:
    """The soak's tasks: plain no-ops, or limited ones (90 % per key, 10 % for the whole task)."""
    if not args.limited:
        return [call("soak.work", seconds=args.task_seconds)] * args.tasks
    calls = []
    for i in range(args.tasks):
        if i % 10 == 9:
            calls.append(call("soak.whole", args.limit, seconds=args.task_seconds))
        else:
            calls.append(call("soak.keyed", args.limit, key=f"k{i % args.keys}", seconds=args.task_seconds))
    return calls


def call(name: str, limit: int | None = None, **kwargs: Any) -> runq.Signature:
    """A soak task's call with the options a producer that does not register the task must give:
    its queue, its retries, and its concurrency limit (per key for ``soak.keyed``)."""
    options: dict[str, Any] = {"queue": QUEUE, "retries": RETRIES}
    if limit is not None:
        options["concurrency"] = runq.Limit(limit, key="key") if name == "soak.keyed" else limit
    return runq.Signature(name, kwargs=kwargs).options(**options)


def environment(url: str) -> dict[str, str]:
    """The workers' environment: this broker, quiet logs, no ledger unless the caller adds one."""
    env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "RUNQ_LOG_LEVEL": "WARNING"}
    env.pop(LEDGER_ENV, None)
    return env


def worker_command(args: argparse.Namespace, variant: str) -> list[str]:
    return [
        sys.executable, "-m", "runq", "worker", "bench.soak:app", "-Q", QUEUE,
        "--pool", args.pool, "--concurrency", str(args.concurrency), "--lease", str(args.lease), "--grace", "10",
        *variant_flags(variant),
    ]  # fmt: skip


def variant_flags(variant: str) -> tuple[str, ...]:
    if variant in VARIANTS:
        return VARIANTS[variant]
    flags: list[str] = []
    for part in variant.split(","):
        name, _, value = part.partition("=")
        flags += [f"--settle-{name.strip()}", value.strip()]
    return tuple(flags)


def enqueue(producer: runq.App, calls: list[runq.Signature], over: float, ids: list[str]) -> None:
    """Enqueue ``calls`` evenly over ``over`` seconds (at once if 0), in rounds of 0.1 s."""
    started = time.monotonic()
    done = 0
    while done < len(calls):
        due = len(calls) if over <= 0 else min(len(calls), int(len(calls) * (time.monotonic() - started) / over) + 1)
        for first in range(done, due, 1000):
            ids.extend(handle.id for handle in producer.enqueue_many(calls[first : min(due, first + 1000)]))
        done = max(done, due)
        if done < len(calls):
            time.sleep(0.1)


def remaining(producer: runq.App) -> int:
    stats = producer.stats().queues.get(QUEUE)
    return 0 if stats is None else stats.pending + stats.scheduled + stats.running + stats.waiting


def soak_once(url: str, args: argparse.Namespace, variant: str, workdir: Path) -> Result:
    ledger = workdir / "ledger"
    ledger.mkdir(parents=True)
    env = {**environment(url), LEDGER_ENV: str(ledger)}
    producer = runq.App(url)
    calls = signatures(args)
    random.Random(args.seed).shuffle(calls)
    ids: list[str] = []
    if args.upfront:
        enqueue(producer, calls, 0, ids)
    rng = random.Random(args.seed)
    fleet = Fleet(worker_command(args, variant), env, workdir, args.workers)
    feeder = threading.Thread(target=enqueue, args=(producer, calls, 0 if args.upfront else args.seconds, ids))
    started = time.time()
    try:
        if not args.upfront:
            feeder.start()
        next_fault = started + rng.uniform(0.5, 1.5) * args.fault_every
        next_look = started + 0.5
        while time.time() < started + args.seconds:
            if time.time() >= next_look:  # faults only while there is work: every kill hits a busy fleet
                next_look = time.time() + 0.5
                if not feeder.is_alive() and len(ids) == len(calls) and not remaining(producer):
                    break
            if time.time() >= next_fault:
                fleet.fault(rng, args.stop_share, args.stop_seconds)
                next_fault = time.time() + rng.uniform(0.5, 1.5) * args.fault_every
            fleet.wake()
            time.sleep(0.05)
        fleet.wake(everyone=True)
        chaos_end = time.time()
        if not args.upfront:
            feeder.join()
        deadline = time.monotonic() + args.drain_timeout
        while remaining(producer):
            if time.monotonic() > deadline:
                raise SystemExit(f"not drained within {args.drain_timeout}s: {remaining(producer)} left ({workdir})")
            time.sleep(0.2)
        drained = time.time()
        limit = probe_seats(producer, args, ledger) if args.limited else {}
    finally:
        fleet.close()
    statuses = {}
    for task_id in ids:
        info = producer.info(task_id)
        statuses[task_id] = ("missing", 0) if info is None else (info.status.value, info.attempts)
    producer.close()
    (workdir / "faults.json").write_text(json.dumps([vars(fault) for fault in fleet.faults]))
    (workdir / "statuses.json").write_text(json.dumps(statuses))
    runs, anomalies = read(ledger, fleet.pids, refusals(workdir.glob("worker-*.log")))
    found = analyse(ids, runs, fleet.faults, statuses, args.lease, anomalies)
    if args.limited:
        peaks, skipped = peak_overlap((run for task_runs in runs.values() for run in task_runs), fleet.faults)
        limit["most_at_once"] = max(peaks.values(), default=0)
        limit["keys_over_limit"] = sorted(key for key, peak in peaks.items() if peak > args.limit)
        limit["runs_left_out_frozen"] = skipped
    kills = sum(fault.kind == "kill" for fault in fleet.faults)
    stops = sum(fault.kind == "stop" for fault in fleet.faults)
    return Result(variant, drained - started, drained - chaos_end, kills, stops, found.to_dict(), limit)


def probe_seats(producer: runq.App, args: argparse.Namespace, ledger: Path) -> dict[str, Any]:
    """After the drain every seat must be free: per key, ``--limit`` probe runs enqueued together
    all start before any ends (a leaked seat makes one wait for another's end). Keys go in rounds
    of at most one worker's slots (a worker claims up to twice its slots ahead), so only a seat,
    never a worker slot, can make a probe wait."""
    keys = [f"k{i}" for i in range(args.keys)] + ["*whole"]
    per_round = max(1, args.concurrency // args.limit)
    late: list[str] = []
    waits: list[float] = []
    for first in range(0, len(keys), per_round):
        batch = keys[first : first + per_round]
        calls = []
        for key in batch:
            for _ in range(args.limit):
                if key == "*whole":
                    calls.append(call("soak.whole", args.limit, seconds=args.probe_seconds, probe=True))
                else:
                    calls.append(call("soak.keyed", args.limit, key=key, seconds=args.probe_seconds, probe=True))
        sent = time.time()
        handles = producer.enqueue_many(calls)
        for handle in handles:
            handle.result(timeout=args.drain_timeout)
        runs, _ = read(ledger, ())
        for key in batch:
            probes = [run for task_runs in runs.values() for run in task_runs if run.probe and run.key == key]
            starts = [run.start for run in probes]
            ends = [run.end for run in probes if run.end is not None]
            if len(probes) != args.limit or max(starts) >= min(ends):
                late.append(key)
            waits.append(max(starts) - sent)
    return {"probed_keys": len(keys), "keys_with_a_busy_seat": late, "slowest_probe_start": round(max(waits), 3)}


# -- throughput --------------------------------------------------------------------------------


def drain_once(url: str, args: argparse.Namespace, variant: str, workdir: Path) -> dict[str, float]:
    env = environment(url)
    producer = runq.App(url)
    enqueue(producer, [call("soak.work", seconds=args.task_seconds)] * args.tasks, 0, [])
    marks: dict[float, float] = {}
    started = time.perf_counter()
    fleet = Fleet(worker_command(args, variant), env, workdir, args.workers)
    try:
        deadline = time.monotonic() + args.drain_timeout
        while len(marks) < 3:
            done = producer.stats().counters.get("succeeded", 0)
            for share in (0.1, 0.9, 1.0):
                if done >= share * args.tasks and share not in marks:
                    marks[share] = time.perf_counter()
            if time.monotonic() > deadline:
                raise SystemExit(f"not drained within {args.drain_timeout}s ({workdir})")
            time.sleep(0.01)
    finally:
        fleet.close()
        producer.close()
    return {"total": args.tasks / (marks[1.0] - started), "steady": 0.8 * args.tasks / (marks[0.9] - marks[0.1])}


# -- the command -------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=BROKERS, default="sqlite")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=40.0, help="of faults [40]")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pool", choices=("thread", "process", "async"), default="thread")
    parser.add_argument("--concurrency", type=int, default=8, help="per worker [8]")
    parser.add_argument("--lease", type=float, default=5.0, help="seconds [5]")
    parser.add_argument("--fault-every", type=float, default=4.0, help="mean seconds between faults [4]")
    parser.add_argument("--stop-share", type=float, default=0.0, help="share of faults that are SIGSTOPs [0]")
    parser.add_argument("--stop-seconds", type=float, default=None, help="SIGSTOP length [2 x lease]")
    parser.add_argument("--task-seconds", type=float, default=None, help="each run [0; 0.01 with --limited]")
    parser.add_argument("--upfront", action="store_true", help="enqueue every task before the workers start")
    parser.add_argument("--limited", action="store_true", help="concurrency-limited tasks; check the limit")
    parser.add_argument("--limit", type=int, default=2, help="runs at once per key [2]")
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--probe-seconds", type=float, default=2.0, help="each seat probe's run [2]")
    parser.add_argument("--throughput", action="store_true", help="no faults: drain rate only")
    parser.add_argument("--variants", default="default", help="comma-free list: default;strict;batch=16,interval=0")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (ledgers, worker logs)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.replace(";", " ").split() if v.strip()]
    if args.stop_seconds is None:
        args.stop_seconds = 2 * args.lease
    if args.task_seconds is None:
        args.task_seconds = 0.01 if args.limited else 0.0
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="runq-soak-"))
    print(f"{args.broker}: seed {args.seed}, work directory {workdir}", flush=True)
    results: dict[str, list[Any]] = {variant: [] for variant in args.variants}
    failed = False
    with brokers(args.broker, workdir) as fresh:
        for run in range(args.runs):
            for variant in args.variants:
                where = workdir / f"run{run}-{variant.replace('=', '').replace(',', '-')}"
                where.mkdir()
                if args.throughput:
                    rate = drain_once(fresh(), args, variant, where)
                    results[variant].append(rate)
                    print(f"run {run + 1} {variant}: total {rate['total']:,.0f}/s, steady {rate['steady']:,.0f}/s")
                    continue
                args.seed += 1
                result = soak_once(fresh(), args, variant, where)
                results[variant].append(result)
                failed |= show(run, result, args)
    summary = summarise(results, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **summary}, indent=1))
    if not args.keep and not failed:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def show(run: int, result: Result, args: argparse.Namespace) -> bool:
    """Print one run; ``True`` when it broke a guarantee."""
    found = result.analysis
    print(
        f"run {run + 1} {result.variant}: {found['tasks']} tasks, {result.kills} kills, {result.stops} stops,"
        f" lost {found['lost']}, not succeeded {found['not_succeeded']}, duplicates {found['duplicates']}"
        f" ({result.per_kill:.2f} per kill; most from one kill {found['most_duplicates_from_one_kill']},"
        f" most unsettled at one kill {found['most_unsettled_at_one_kill']}), drain {result.drain:.1f}s",
        flush=True,
    )
    print(f"  causes {found['causes']}; interrupted {found['interrupted']}; unstarted {found['unstarted_claims']}")
    for line in found["examples"][:5] + found["anomalies"][:5]:
        print(f"  ! {line}")
    broke = bool(found["lost"] or found["not_succeeded"] or found["anomalies"])
    broke |= bool(found["causes"].get("settled, yet ran again") or found["causes"].get("unexplained"))
    if result.limit:
        print(f"  limit: {result.limit}")
        broke |= bool(result.limit["keys_over_limit"] or result.limit["keys_with_a_busy_seat"])
    return broke


def summarise(results: dict[str, list[Any]], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for variant, found in results.items():
        if not found:
            continue
        if args.throughput:
            total = statistics.median(r["total"] for r in found)
            steady = statistics.median(r["steady"] for r in found)
            summary[variant] = {"total": total, "steady": steady, "runs": found}
            print(f"{variant}: median total {total:,.0f}/s, steady {steady:,.0f}/s over {len(found)} run(s)")
            continue
        kills = sum(r.kills for r in found)
        duplicates = sum(r.analysis["duplicates"] for r in found)
        causes: Counter[str] = Counter()
        for r in found:
            causes.update(r.analysis["causes"])
        summary[variant] = {
            "runs": [vars(r) for r in found],
            "kills": kills,
            "duplicates": duplicates,
            "per_kill": duplicates / kills if kills else 0.0,
            "median_per_kill": statistics.median(r.per_kill for r in found),
            "lost": sum(r.analysis["lost"] for r in found),
            "causes": dict(causes),
        }
        shown = summary[variant]
        print(
            f"{variant}: {len(found)} run(s), {kills} kills, {duplicates} duplicates = {shown['per_kill']:.2f}"
            f" per kill (median of runs {shown['median_per_kill']:.2f}), lost {shown['lost']}"
        )
    if args.throughput and len(summary) > 1:
        first, *others = summary
        for other in others:
            steady = summary[other]["steady"] / summary[first]["steady"]
            total = summary[other]["total"] / summary[first]["total"]
            print(f"{other} / {first}: steady {steady:.2f}, total {total:.2f}")
    return summary


if __name__ == "__main__":
    sys.exit(main())
