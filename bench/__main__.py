"""``python -m bench``: runq side by side with its peers; writes bench/RESULTS.md.

python -m bench                                  # every library, W1-W4 (+ W5 for runq), 3 runs
python -m bench --libs runq --workloads W1,W5    # runq's own workloads
python -m bench --libs runq,huey --runs 1 --tasks 2000 --no-write
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .harness import WORKLOADS, Harness, Sizes, count_steps, environment_ready, interleaved
from .peers import NAMES
from .redis_server import RedisServer
from .report import machine, render

HERE = Path(__file__).resolve().parent


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--libs", default=",".join(NAMES), help=f"comma-separated, of: {','.join(NAMES)}")
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5", help="comma-separated, of: W1,W2,W3,W4,W5")
    parser.add_argument("--runs", type=int, default=3, help="runs per workload; the table shows the median [3]")
    parser.add_argument("--tasks", type=int, default=20_000, help="W1 and W2 tasks [20000]")
    parser.add_argument("--trips", type=int, default=300, help="W3 round trips [300]")
    parser.add_argument("--io-tasks", type=int, default=2_000, help="W4 tasks [2000]")
    parser.add_argument("--depths", default="1000,100000", help="W5 queue depths [1000,100000]")
    parser.add_argument("--million", action="store_true", help="W5 also at 1,000,000 queued tasks (slow)")
    parser.add_argument("--batch", type=int, default=1_000, help="tasks per bulk enqueue call [1000]")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="markdown output [bench/RESULTS.md]")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not write --out")
    parser.add_argument("--note", default="", help="a line for RESULTS.md (e.g. 'machine shared with test runs')")
    args = parser.parse_args(argv)
    libs = [name.strip() for name in args.libs.split(",") if name.strip()]
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    for name in libs:
        if name not in NAMES:
            parser.error(f"unknown library {name!r}; choose from {', '.join(NAMES)}")
    for workload in workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    args.libs, args.workloads = libs, workloads
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    args.sizes = Sizes(args.tasks, args.trips, args.io_tasks, tuple(depths + [1_000_000] * args.million), args.batch)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    console = Console(stderr=True)
    environment_ready()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="runq-bench-") as tmp:
        server = RedisServer(Path(tmp))
        os.environ["BENCH_REDIS_URL"] = server.url  # the adapters configure their apps from it at import
        logs = Path(tmp) / "logs"
        logs.mkdir()
        failed: dict[str, str] = {}
        try:
            total = count_steps(args.libs, args.workloads, args.runs)
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("starting", total=total)
                first = [True]

                def step(text: str) -> None:
                    if not first[0]:
                        progress.advance(bar)
                    first[0] = False
                    progress.update(bar, description=text)

                harness = Harness(server.url, args.sizes, logs, step)
                rows = interleaved(harness, args.libs, args.workloads, args.runs, failed)
                for name, error in failed.items():
                    console.print(f"[red]{name} could not run: {error}")
                progress.advance(bar)
            info = machine(server.version(), started)
        finally:
            server.kill()
        for row in rows:
            for error in row.errors:
                console.print(f"[yellow]{row.label}: {error}")
        text = render(rows, failed, info, args)
    if args.no_write:
        print(text)
    else:
        args.out.write_text(text)
        console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
