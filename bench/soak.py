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

``--long``: the long soak (issue 23 part 4; :mod:`bench.soak_sizes`): every ``--sample-every``
seconds the workers' RSS, the broker's size and the tasks enqueued and finished are noted; at
``--restart-at`` seconds the broker is restarted once (Redis: a graceful SHUTDOWN of the
append-only private server and a start on the same port; PostgreSQL: every backend of the
private database terminated, the shared server left up); ``--spare`` workers are never killed
(one long-lived process shows a leak that replaced ones would hide); ``--vacuum-every S``
(PostgreSQL) runs ``VACUUM (ANALYZE)`` on runq's tables every S seconds, for a server whose
autovacuum is off (the machine's is: what autovacuum does is then the soak's to do). Finished
records expire (``result_ttl``, 600 s) before the end, so the final statuses come from the
broker's counters, not from each task's record; the ledger still checks every task. The samples, a flatness
verdict per series and the restart go to ``--json``, a plot to ``--plot`` (an SVG)::

    python -m bench.soak --broker redis --long --tasks 1000000 --seconds 1800 --fault-every 45 \
        --json soak-long-redis.json --plot docs/soak-redis.svg

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
from runq.models import DEFAULT_RESULT_TTL

from .ledger import LEDGER_ENV, Fault, analyse, note, peak_overlap, read, refusals
from .soak_sizes import PostgresStore, RedisStore, Sampler, Store, Vacuumer, flatness, plot, series

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "soak"
RETRIES = 1000  # a lost run (WorkerLost) uses an attempt: a task must outlive every kill that takes it
BROKERS = ("sqlite", "redis", "valkey", "cluster", "postgres")
ADMIN_URL = os.environ.get("RUNQ_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
MIB = 2**20
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


@dataclass
class Private:
    """A private broker: ``fresh()`` empties it and returns its URL; ``server``, a private
    redis-server or valkey-server (the long soak restarts it)."""

    fresh: Callable[[], str]
    server: Any = None


@contextmanager
def brokers(kind: str, directory: Path, persist: bool = False) -> Iterator[Private]:
    """A private broker of ``kind`` for this soak (``persist``: a Redis that keeps its data
    through a restart, append-only)."""
    sys.path.insert(0, str(ROOT))  # tests.support: the servers the tests use
    if kind == "sqlite":
        count = iter(range(1_000_000))
        yield Private(lambda: f"sqlite:///{directory / f'soak-{next(count)}.db'}")
    elif kind in ("redis", "valkey"):
        from tests.support.servers import RedisServer, valkey_binary

        extra = ("--appendonly", "yes", "--appendfsync", "everysec") if persist else ()
        server = RedisServer(directory / kind, *extra, binary=valkey_binary() if kind == "valkey" else None)

        def flushed() -> str:
            server.flush()
            return server.url

        try:
            yield Private(flushed, server)
        finally:
            server.kill()
    elif kind == "cluster":
        from tests.support.servers import RedisCluster

        cluster = RedisCluster(directory / "cluster")

        def flushed_cluster() -> str:
            cluster.flush()
            return cluster.url

        try:
            yield Private(flushed_cluster)
        finally:
            cluster.kill()
    elif kind == "postgres":
        from .postgres import private_database

        with private_database(ADMIN_URL) as database:
            yield Private(lambda: f"{database}?schema=soak_{secrets.token_hex(4)}")
    else:
        raise SystemExit(f"unknown broker {kind!r}; choose from {', '.join(BROKERS)}")


# -- the fleet ---------------------------------------------------------------------------------


class Fleet:
    """``--workers`` real worker processes; a killed one is replaced at once. The first ``spare``
    are never faulted."""

    def __init__(self, command: list[str], env: dict[str, str], logs: Path, size: int, spare: int = 0) -> None:
        self.command, self.env, self.logs = command, env, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopped: dict[int, tuple[float, float]] = {}  # pid -> (stopped at, when to SIGCONT it)
        self.faults: list[Fault] = []
        self.pids: set[int] = set()  # every worker that ever ran
        for _ in range(size):
            self.start()
        self.spared = {proc.pid for proc in self.procs[:spare]}

    def start(self) -> None:
        with open(self.logs / f"worker-{len(self.pids)}.log", "ab") as out:
            proc = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.pids.add(proc.pid)

    def fault(self, rng: random.Random, stop_share: float, stop_seconds: float) -> None:
        awake = [p for p in self.procs if p.pid not in self.spared and p.pid not in self.stopped and p.poll() is None]
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
    long: dict[str, Any] = field(default_factory=dict)  # --long: samples, restart, verdicts, counters

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


def enqueue(
    producer: runq.App, calls: list[runq.Signature], over: float, ids: list[str], failures: list[str] | None = None
) -> None:
    """Enqueue ``calls`` evenly over ``over`` seconds (at once if 0), in rounds of 0.1 s. With
    ``failures``, a failed enqueue (the broker restarting) is noted there and tried again; a batch
    that was stored though its reply was lost then runs with ids the soak does not check."""
    started = time.monotonic()
    done = 0
    while done < len(calls):
        due = len(calls) if over <= 0 else min(len(calls), int(len(calls) * (time.monotonic() - started) / over) + 1)
        first = done
        while first < due:
            batch = calls[first : min(due, first + 1000)]
            try:
                ids.extend(handle.id for handle in producer.enqueue_many(batch))
            except Exception as error:
                if failures is None or len(failures) > 1000:
                    raise
                failures.append(f"{time.time():.1f} {type(error).__name__}: {error}"[:300])
                time.sleep(0.5)
                continue
            first += len(batch)
        done = max(done, due)
        if done < len(calls):
            time.sleep(0.1)


def remaining(producer: runq.App) -> int:
    """Tasks not finished yet (-1 while the broker does not answer)."""
    try:
        stats = producer.stats().queues.get(QUEUE)
    except Exception:
        return -1
    return 0 if stats is None else stats.pending + stats.scheduled + stats.running + stats.waiting


def soak_once(url: str, args: argparse.Namespace, variant: str, workdir: Path, server: Any = None) -> Result:
    """One soak on ``url`` (``server``: its private redis-server, which ``--long`` restarts)."""
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
    fleet = Fleet(worker_command(args, variant), env, workdir, args.workers, args.spare)
    failures: list[str] | None = [] if args.long else None
    over = 0 if args.upfront else args.seconds
    feeder = threading.Thread(target=enqueue, args=(producer, calls, over, ids, failures))
    sampler = long_sampler(url, args, fleet, ids, server) if args.long else None
    restart: dict[str, Any] = {}
    vacuum = Vacuumer(url, args.vacuum_every) if args.vacuum_every and args.broker == "postgres" else None
    started = time.time()
    if sampler is not None:
        sampler.started = started
        sampler.start()
    if vacuum is not None:
        vacuum.started = started
        vacuum.start()
    try:
        if not args.upfront:
            feeder.start()
        next_fault = started + rng.uniform(0.5, 1.5) * args.fault_every
        next_look = started + 0.5
        while time.time() < started + args.seconds:
            if time.time() >= next_look:  # faults only while there is work: every kill hits a busy fleet
                next_look = time.time() + (5.0 if args.long else 0.5)
                if not feeder.is_alive() and len(ids) == len(calls) and not remaining(producer):
                    break
            if time.time() >= next_fault:
                fleet.fault(rng, args.stop_share, args.stop_seconds)
                next_fault = time.time() + rng.uniform(0.5, 1.5) * args.fault_every
            if sampler is not None and not restart and time.time() >= started + args.restart_at:
                at = time.time()
                restart = {"at": at - started, "what": sampler.store.restart(), "took": time.time() - at}
                print(f"  restart at {restart['at']:.0f} s: {restart['what']} ({restart['took']:.1f} s)", flush=True)
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
        if sampler is not None:
            sampler.stop()
        if vacuum is not None:
            vacuum.stop()
        fleet.close()
    statuses: dict[str, tuple[str, int]] | None = {}
    if args.long:  # most records have expired (result_ttl): the counters say how the tasks ended
        statuses = None
        long = {"counters": producer.stats().counters, "enqueue_failures": failures, "restart": restart}
        if vacuum is not None:
            long["vacuums"], long["vacuum_errors"] = vacuum.runs, vacuum.errors
    else:
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
    result = Result(variant, drained - started, drained - chaos_end, kills, stops, found.to_dict(), limit)
    if sampler is not None:
        kill_times = [fault.at - started for fault in fleet.faults if fault.kind == "kill"]
        result.long = {**long, **sized(sampler, args, kill_times, restart)}
        result.long["killed_pids"] = [fault.worker for fault in fleet.faults if fault.kind == "kill"]
    return result


def long_sampler(url: str, args: argparse.Namespace, fleet: Fleet, ids: list[str], server: Any) -> Sampler:
    """The long soak's sampler: the workers' RSS, the broker's size, enqueued and finished tasks."""
    store: Store
    if args.broker in ("redis", "valkey"):
        store = RedisStore(server)
    elif args.broker == "postgres":
        store = PostgresStore(url)
    else:
        raise SystemExit(f"--long runs on redis, valkey or postgres, not {args.broker}")
    watcher = runq.App(url)

    def progress() -> tuple[int, int | None]:
        return len(ids), watcher.stats().counters.get("succeeded", 0)

    return Sampler(
        args.sample_every, lambda: [proc.pid for proc in list(fleet.procs)], lambda: fleet.spared, store, progress
    )


def sized(sampler: Sampler, args: argparse.Namespace, kills: list[float], restart: dict[str, Any]) -> dict[str, Any]:
    """The samples, each series' flatness after the warm-up (up to the end of the feed), the plot."""
    samples = sampler.samples
    names = ["rss_spared", "rss_others_median"]
    if args.broker == "postgres":
        names += ["store.total", "store.heap", "store.indexes", "store.live_rows", "store.dead_rows"]
        store_lines = [("store.total", "total"), ("store.heap", "heap"), ("store.indexes", "indexes")]
        store_heading = "PostgreSQL: runq's tables, pg_total_relation_size"
    else:
        names += ["store.used_memory", "store.keys"]
        store_lines = [("store.used_memory", "used_memory")]
        store_heading = "Redis INFO memory used_memory"
    verdicts = {name: flatness(series(samples, name), args.warm_up, args.seconds) for name in names}
    for name, verdict in verdicts.items():
        print(f"  {name}: {verdict}")
    if args.plot:
        title = (
            f"runq long soak, {args.broker}: {len(samples)} samples, {args.tasks:,} tasks over {args.seconds:.0f} s,"
            f" {args.workers} workers, {len(kills)} SIGKILLs"
        )
        plot(
            args.plot,
            title,
            samples,
            [
                ("Worker RSS", [("rss_spared", "spared worker"), ("rss_others_median", "others, median")], MIB, "MiB"),
                (store_heading, store_lines, MIB, "MiB"),
                ("Tasks", [("enqueued", "enqueued"), ("finished", "succeeded")], 1000, "thousands"),
            ],
            kills,
            restart.get("at"),
            args.warm_up,
        )
        print(f"  plot: {args.plot}")
    return {"warm_up": args.warm_up, "verdicts": verdicts, "kill_times": kills, "samples": samples}


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
    parser.add_argument("--long", action="store_true", help="sample sizes, restart the broker once (redis, postgres)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="--long: seconds between samples [10]")
    parser.add_argument("--restart-at", type=float, default=None, help="--long: seconds in [half of --seconds]")
    parser.add_argument("--spare", type=int, default=None, help="workers never killed [0; 1 with --long]")
    parser.add_argument("--warm-up", type=float, default=None, help="--long: seconds before sizes must be flat [660]")
    parser.add_argument("--plot", type=Path, default=None, help="--long: draw the samples into this SVG")
    parser.add_argument("--vacuum-every", type=float, default=0, help="postgres: VACUUM runq's tables [0: never]")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (ledgers, worker logs)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.replace(";", " ").split() if v.strip()]
    if args.stop_seconds is None:
        args.stop_seconds = 2 * args.lease
    if args.task_seconds is None:
        args.task_seconds = 0.01 if args.limited else 0.0
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.restart_at is None:
        args.restart_at = args.seconds / 2 if args.long else float("inf")
    if args.spare is None:
        args.spare = 1 if args.long else 0
    if args.warm_up is None:
        args.warm_up = DEFAULT_RESULT_TTL + 60  # every finished record kept is one that expires too
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="runq-soak-"))
    print(f"{args.broker}: seed {args.seed}, work directory {workdir}", flush=True)
    results: dict[str, list[Any]] = {variant: [] for variant in args.variants}
    failed = False
    with brokers(args.broker, workdir, persist=args.long) as private:
        for run in range(args.runs):
            for variant in args.variants:
                where = workdir / f"run{run}-{variant.replace('=', '').replace(',', '-')}"
                where.mkdir()
                if args.throughput:
                    rate = drain_once(private.fresh(), args, variant, where)
                    results[variant].append(rate)
                    print(f"run {run + 1} {variant}: total {rate['total']:,.0f}/s, steady {rate['steady']:,.0f}/s")
                    continue
                args.seed += 1
                result = soak_once(private.fresh(), args, variant, where, private.server)
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
    if result.long:
        counters = result.long["counters"]
        print(f"  counters {counters}; enqueue failures {len(result.long['enqueue_failures'] or [])}")
        broke |= bool(counters.get("failed")) or counters.get("succeeded", 0) < found["tasks"]
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
