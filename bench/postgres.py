"""``python -m bench.postgres``: runq's PostgreSQL broker beside Procrastinate and PgQueuer.

python -m bench.postgres                         # W1-W4, 3 runs, writes bench/RESULTS-postgres.md
python -m bench.postgres --runs 1 --tasks 2000 --no-write

All three run on the same PostgreSQL server (``RUNQ_BENCH_POSTGRES``, default the machine's
``postgresql://postgres@127.0.0.1:5432/postgres``), in one private database created for the
run and dropped after it; each library's tables are emptied before every measurement.
The workloads, the worker processes and the completion count (one ``INCR`` per task in a
private Redis) are :mod:`bench.harness`'s, unchanged, so the figures compare like with like
with bench/RESULTS.md's. Run it under the shared lock: ``flock /tmp/runq-bench.lock …``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from .harness import Harness, Row, Sizes, environment_ready, interleaved
from .peers.pg import ENV
from .redis_server import RedisServer
from .report import COLUMNS, best_peer, cell, fmt, machine, problems, settings

HERE = Path(__file__).resolve().parent
LIBS = ["runq_postgres", "procrastinate", "pgqueuer"]
ADMIN_URL = os.environ.get("RUNQ_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGETS = {"W1 single": 1.5, "W2 total": 2.0}  # issue 13: runq ÷ the faster peer


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.postgres", description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default=",".join(LIBS), help=f"comma-separated, of: {','.join(LIBS)}")
    parser.add_argument("--workloads", default="W1,W2,W3,W4", help="comma-separated, of: W1,W2,W3,W4")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; the table shows the median [3]")
    parser.add_argument("--tasks", type=int, default=5_000, help="W1 and W2 tasks [5000]")
    parser.add_argument("--trips", type=int, default=200, help="W3 round trips [200]")
    parser.add_argument("--io-tasks", type=int, default=2_000, help="W4 tasks [2000]")
    parser.add_argument("--batch", type=int, default=1_000, help="tasks per bulk enqueue call [1000]")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-postgres.md")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not write --out")
    parser.add_argument("--note", default="", help="a line for the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    args.libs = [name.strip() for name in args.libs.split(",") if name.strip()]
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    for name in args.libs:
        if name not in LIBS:
            parser.error(f"unknown library {name!r}; choose from {', '.join(LIBS)}")
    for workload in args.workloads:
        if workload not in ("W1", "W2", "W3", "W4"):
            parser.error(f"unknown workload {workload!r}; choose from W1, W2, W3, W4")
    args.sizes = Sizes(args.tasks, args.trips, args.io_tasks, (), args.batch)
    return args


@contextmanager
def private_database(admin_url: str) -> Iterator[str]:
    """A database of this run's own on the server, dropped at the end (never someone else's)."""
    name = f"runq_bench_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=30) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _exit)  # so that the private database is dropped on `kill`
    environment_ready()
    started = time.time()
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="runq-bench-pg-") as tmp, private_database(ADMIN_URL) as url:
        server = RedisServer(Path(tmp))  # only for the completion counter, as in python -m bench
        os.environ["BENCH_REDIS_URL"] = server.url
        os.environ[ENV] = url  # the adapters (and their workers) read it at import
        logs = Path(tmp) / "logs"
        logs.mkdir()
        try:
            harness = Harness(server.url, args.sizes, logs, lambda text: print(text, file=sys.stderr, flush=True))
            rows = interleaved(harness, args.libs, args.workloads, args.runs, failed)
            with psycopg.connect(url) as conn:
                pg_version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            info = machine(server.version(), started)
        finally:
            server.kill()
    for row in rows:
        if row.library == "runq_postgres":
            row.library = "runq"  # what report.best_peer and the ratio table call runq
        for error in row.errors:
            print(f"{row.label}: {error}", file=sys.stderr)
    text = render(rows, failed, info, args, pg_version)
    if args.no_write:
        print(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def render(rows: list[Row], failed: dict[str, str], info: dict[str, Any], args: argparse.Namespace, pg: str) -> str:
    s = args.sizes
    out = [
        "# runq's PostgreSQL broker, Procrastinate and PgQueuer, side by side",
        "",
        f"Run on {info['date']} with `python -m bench.postgres --runs {args.runs} --tasks {s.tasks}` "
        f"({info['minutes']:.0f} min), PostgreSQL {pg}, all three on the same server, in one private database. "
        f"Each cell: **median of {args.runs} runs (min-max)**, the runs interleaved (runq, Procrastinate, PgQueuer, "
        "then the reverse order, …); throughputs in tasks/s, latencies in ms. "
        "Workloads as in [README.md](README.md): W1 enqueue ({:,} tasks; bulk {:,} per call), W2 drain of {:,} "
        "pre-enqueued no-op tasks by 2 worker processes (start-up included), W3 {} sequential round trips, "
        "W4 {:,} tasks sleeping 10 ms on 2 processes with 50-way concurrency.".format(
            s.tasks, s.batch, s.tasks, s.trips, s.io_tasks
        ),
        "",
    ]
    if args.note:
        out += [f"> {args.note}", ""]
    header = ["library", "version", *[f"{name} {unit}" for name, unit, _ in COLUMNS]]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if not any(row.samples.get(name) for name, _, _ in COLUMNS):
            continue
        label = f"**{row.label} (postgres)**" if row.library == "runq" else row.label
        cells = [label, row.version, *[cell(row.samples.get(name, []), unit) for name, unit, _ in COLUMNS]]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", *ratios(rows), *settings(rows)[:-3], "", *problems(rows, failed), *machine_lines(info)]
    return "\n".join(out) + "\n"


def ratios(rows: list[Row]) -> list[str]:
    runq = next((r for r in rows if r.library == "runq" and not r.variant.name), None)
    if runq is None:
        return []
    out = [
        "## runq (PostgreSQL) against the faster peer",
        "",
        "| workload | runq | faster peer | ratio | target (issue 13) | met |",
        "|---|---|---|---|---|---|",
    ]
    for name, unit, higher in COLUMNS:
        mine, best = runq.samples.get(name), best_peer(rows, name, higher)
        if not mine or best is None:
            continue
        value = statistics.median(mine)
        ratio = value / best[0] if higher else best[0] / value
        target = TARGETS.get(name)
        verdict = "" if target is None else ("yes" if ratio >= target else "**no**")
        goal = f"≥ {target} x" if target else ""
        out.append(
            f"| {name} | {fmt(value, unit)} {unit} | {fmt(best[0], unit)} {unit} ({best[1]}) | x{ratio:.2f} | "
            f"{goal} | {verdict} |"
        )
    return [*out, ""]


def machine_lines(info: dict[str, Any]) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in info["load"])
    return [
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; {info['os']}; Python {info['python']}",
        f"- load average at the end of the run: {load}",
    ]


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
