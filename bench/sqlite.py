"""``python -m bench.sqlite``: runq on its default SQLite broker beside Huey's ``SqliteHuey``.

python -m bench.sqlite                           # W1-W4, 3 runs, writes bench/RESULTS-sqlite.md
python -m bench.sqlite --runs 1 --tasks 2000 --no-write

Huey is the one peer whose embedded default is a SQLite file. Both libraries keep their
database in one temporary directory of this run (``runq.db``, ``huey.db``), each measurement
on a new file. The workloads, the worker processes and the completion count are
:mod:`bench.harness`'s, unchanged: every task does one ``INCR`` in a private redis-server,
which is not the broker under test, so both pay the same and are counted the same way.
Run it under the shared lock: ``flock /tmp/runq-bench.lock …``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Harness, Row, Sizes, environment_ready, interleaved
from .peers.sqlite_dir import ENV
from .redis_server import RedisServer
from .report import COLUMNS, best_peer, cell, fmt, machine, problems

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIBS = ["runq_sqlite", "huey_sqlite"]
TARGET = "ahead of Huey (issue 24)"
P50_GOAL_MS = 5.0  # issue 24: an enqueue -> result round trip on SQLite
WHY = "Where runq is behind, and why: [README.md](README.md#where-runq-is-behind-and-why)."


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sqlite", description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default=",".join(LIBS), help=f"comma-separated, of: {','.join(LIBS)}")
    parser.add_argument("--workloads", default="W1,W2,W3,W4", help="comma-separated, of: W1,W2,W3,W4")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; the table shows the median [3]")
    parser.add_argument("--tasks", type=int, default=20_000, help="W1 and W2 tasks [20000]")
    parser.add_argument("--trips", type=int, default=300, help="W3 round trips [300]")
    parser.add_argument("--io-tasks", type=int, default=2_000, help="W4 tasks [2000]")
    parser.add_argument("--batch", type=int, default=1_000, help="tasks per bulk enqueue call [1000]")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS-sqlite.md")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not write --out")
    parser.add_argument("--note", default="", help="a line for the results (e.g. 'machine shared')")
    args = parser.parse_args(argv)
    args.argv = argv
    args.libs = [name.strip() for name in args.libs.split(",") if name.strip()]
    args.workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    for name in args.libs:
        if name not in LIBS:
            parser.error(f"unknown library {name!r}; choose from {', '.join(LIBS)}")
    for workload in args.workloads:
        if workload not in ("W1", "W2", "W3", "W4"):
            parser.error(f"unknown workload {workload!r}; choose from W1, W2, W3, W4")
    if min(args.runs, args.tasks, args.trips, args.io_tasks, args.batch) < 1:
        parser.error("--runs, --tasks, --trips, --io-tasks and --batch must be at least 1")
    args.sizes = Sizes(args.tasks, args.trips, args.io_tasks, (), args.batch)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    environment_ready()
    started = time.time()
    load_before = os.getloadavg()
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="runq-bench-sqlite-") as tmp:
        server = RedisServer(Path(tmp))  # only for the completion counter, as in python -m bench
        os.environ["BENCH_REDIS_URL"] = server.url
        os.environ[ENV] = tmp  # the adapters (and their workers) read it at import
        logs = Path(tmp) / "logs"
        logs.mkdir()
        try:
            harness = Harness(server.url, args.sizes, logs, progress)
            rows = interleaved(harness, args.libs, args.workloads, args.runs, failed)
            info = machine(server.version(), started)
        finally:
            server.kill()
    info["load_before"] = load_before
    for row in rows:
        row.library = row.library.removesuffix("_sqlite")  # report.best_peer tells runq by this name
        for error in row.errors:
            print(f"{row.label}: {error}", file=sys.stderr)
    text = render(rows, failed, info, args)
    if args.no_write:
        print(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def progress(text: str) -> None:
    print(f"  {text.replace(' run 1/1', '')}", file=sys.stderr, flush=True)


def render(rows: list[Row], failed: dict[str, str], info: dict[str, Any], args: argparse.Namespace) -> str:
    s = args.sizes
    command = shlex.join(["flock", "/tmp/runq-bench.lock", python(), "-m", "bench.sqlite", *args.argv])
    out = [
        "# runq's SQLite broker and Huey's SqliteHuey, side by side",
        "",
        f"Run on {info['date']} with `{command}` ({info['minutes']:.0f} min), SQLite {sqlite3.sqlite_version},"
        " both databases in one temporary directory on the same disk, a new file for every measurement."
        f" Each cell: **median of {args.runs} runs (min-max)**, the runs interleaved (runq then Huey, Huey then"
        " runq, …); throughputs in tasks/s, latencies in ms. Workloads as in [README.md](README.md):"
        f" W1 enqueue ({s.tasks:,} tasks, one call each; bulk {s.batch:,} per call: Huey has no bulk API, —),"
        f" W2 drain of {s.tasks:,} pre-enqueued no-op tasks by 2 worker processes (total: start-up included;"
        f" steady: between the 10 % and 90 % marks), W3 {s.trips} sequential enqueue → result round trips with"
        f" one idle worker (fewer where the trips column says so), W4 {s.io_tasks:,} tasks sleeping 10 ms on 2"
        " processes with 50-way concurrency. Completions (W2, W4): every task does one `INCR` in a private"
        " redis-server, not the broker under test, the same for both libraries.",
        "",
    ]
    if args.note:
        out += [f"> {args.note}", ""]
    header = ["library", "version", *[f"{name} {unit}" for name, unit, _ in COLUMNS], "W3 trips"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if not any(row.samples.get(name) for name, _, _ in COLUMNS):
            continue
        label = f"**{row.label} (sqlite)**" if row.library == "runq" else f"{row.label} (SqliteHuey)"
        cells = [label, row.version, *[cell(row.samples.get(name, []), unit) for name, unit, _ in COLUMNS]]
        trips = row.samples.get("W3 trips")
        cells.append(f"{trips[0]:.0f}" if trips else "—")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", *ratios(rows), WHY, "", *settings(rows), *problems(rows, failed), *machine_lines(info)]
    return "\n".join(out) + "\n"


def python() -> str:
    """This interpreter as the command line shows it: relative to the checkout (``.venv-bench/bin/python``)."""
    path = Path(sys.executable)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else "python"


def ratios(rows: list[Row]) -> list[str]:
    """runq (its defaults) against the better Huey variant per workload: the target. Beside it,
    runq with ``synchronous=off`` against the same, where neither syncs the file (like for like
    with ``SqliteHuey(fsync=False)``)."""
    runq = next((r for r in rows if r.library == "runq" and not r.variant.name), None)
    if runq is None:
        return []
    unsynced = next((r for r in rows if r.library == "runq" and r.variant.name), None)
    out = [
        "## runq (SQLite) against Huey's faster variant",
        "",
        "Ratio > 1: runq ahead (runq ÷ Huey for throughput, Huey ÷ runq for latency). The last column compares",
        "runq with `?synchronous=off` (no fsync, as `SqliteHuey(fsync=False)`) with the same Huey figure.",
        "",
        f"| workload | runq | Huey (faster variant) | ratio | target: {TARGET} | met | runq synchronous=off |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, unit, higher in COLUMNS:
        mine, best = runq.samples.get(name), best_peer(rows, name, higher)
        if not mine or best is None:
            continue
        value = statistics.median(mine)
        ratio = value / best[0] if higher else best[0] / value
        goal, ok = "ratio > 1", ratio > 1
        if name == "W3 p50":
            goal, ok = f"ratio > 1, ≤ {P50_GOAL_MS:g} ms", ok and value <= P50_GOAL_MS
        off = unsynced.samples.get(name) if unsynced else None
        beside = "—"
        if off:
            other = statistics.median(off)
            beside = f"{fmt(other, unit)} {unit}, x{other / best[0] if higher else best[0] / other:.2f}"
        out.append(
            f"| {name} | {fmt(value, unit)} {unit} | {fmt(best[0], unit)} {unit} ({best[1]}) | x{ratio:.2f} | "
            f"{goal} | {'yes' if ok else '**no**'} | {beside} |"
        )
    return [*out, ""]


def settings(rows: list[Row]) -> list[str]:
    out = ["## Settings", "", "| library | version | worker command and settings |", "|---|---|---|"]
    out += [f"| {row.label} | {row.version} | {row.variant.settings} |" for row in rows]
    out += [
        "",
        "Neither worker writes a log line per task (runq `RUNQ_LOG_LEVEL=WARNING`, `huey_consumer -q`).",
        "",
    ]
    return out


def machine_lines(info: dict[str, Any]) -> list[str]:
    def load(values: tuple[float, float, float]) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    return [
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; {info['os']}; Python {info['python']}",
        f"- SQLite {sqlite3.sqlite_version} (Python's `sqlite3`); redis-server {info['redis']} (the counter only)",
        f"- load average (1, 5, 15 min) at the start: {load(info['load_before'])}; at the end: {load(info['load'])}",
    ]


if __name__ == "__main__":
    sys.exit(main())
