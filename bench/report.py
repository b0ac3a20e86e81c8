"""bench/RESULTS.md: the side-by-side table, runq against the best peer, W5, settings, machine."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .harness import Row

# metric, unit, higher is better
COLUMNS = [
    ("W1 single", "/s", True),
    ("W1 bulk", "/s", True),
    ("W2 total", "/s", True),
    ("W2 steady", "/s", True),
    ("W3 p50", "ms", False),
    ("W3 p95", "ms", False),
    ("W3 p99", "ms", False),
    ("W4 total", "/s", True),
    ("W4 steady", "/s", True),
]
PROCESS_POOL = "W2 total, process pool"  # runq's default pool: a row of its own in the ratio table
TARGETS = {  # issue 24: what runq must reach, as a ratio to the best peer (or an absolute figure)
    "W1 single": "≥ 1.3 x",
    "W1 bulk": "≥ 10 x the best peer's single",
    "W2 total": "≥ 3 x",
    PROCESS_POOL: "≥ 1.5 x",
    "W3 p50": "below every peer, < 1 ms",
    "W3 p99": "below every peer",
    "W4 steady": "≥ 8,000/s (80 % of 2 x 50 / 10 ms)",
}


def machine(redis_version: str, started: float) -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "redis": redis_version,
        "date": datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": (time.time() - started) / 60,
        "load": os.getloadavg(),
    }


def fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def cell(samples: list[float], unit: str) -> str:
    if not samples:
        return "—"
    middle = fmt(statistics.median(samples), unit)
    if len(samples) == 1:
        return middle
    return f"{middle} ({fmt(min(samples), unit)}-{fmt(max(samples), unit)})"


def best_peer(rows: list[Row], metric: str, higher: bool) -> tuple[float, str] | None:
    values = [
        (statistics.median(r.samples[metric]), r.label) for r in rows if r.library != "runq" and r.samples.get(metric)
    ]
    if not values:
        return None
    return max(values) if higher else min(values)


def render(rows: list[Row], failed: dict[str, str], info: dict[str, Any], args: argparse.Namespace) -> str:
    s = args.sizes
    out = [
        "# runq and its peers, side by side",
        "",
        f"Run on {info['date']} with `python -m bench --runs {args.runs}` "
        f"({info['minutes']:.0f} min). Each cell: **median of {args.runs} runs (min-max)**, the runs interleaved "
        "(every library's first run, then every library's second in the reverse order, …); "
        "throughputs in tasks/s, latencies in ms. How each workload is measured: [README.md](README.md).",
        "",
    ]
    if args.note:
        out += [f"> {args.note}", ""]
    out += [
        f"- W1: {s.tasks:,} no-op tasks enqueued one call at a time from one process; bulk: the library's bulk API, "
        f"{s.batch:,} per call (runq `enqueue_many`, RQ `enqueue_many`; the others have none).",
        f"- W2: {s.tasks:,} pre-enqueued no-op tasks, 2 worker processes; total = from launching the workers to the "
        "last completion (start-up included); steady = between the 10 % and 90 % completion marks.",
        f"- W3: {s.trips} sequential enqueue → result round trips with one idle worker, each library's own result wait "
        "(fewer for result APIs that poll every 0.2-0.5 s: see the trips column).",
        f"- W4: {s.io_tasks:,} tasks that sleep 10 ms, 2 worker processes with 50-way concurrency each.",
        "- Completions (W2, W4) are counted the same way for every library: each task does one `INCR` on a counter key "
        "in the private Redis.",
        "",
    ]
    header = ["library", "version", *[f"{name} {unit}" for name, unit, _ in COLUMNS], "W3 trips"]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if not any(row.samples.get(name) for name, _, _ in COLUMNS) and not row.errors:
            continue
        cells = [f"**{row.label}**" if row.library == "runq" else row.label, row.version]
        cells += [cell(row.samples.get(name, []), unit) for name, unit, _ in COLUMNS]
        if row.variant.cap:  # W2 and W4 ran with fewer tasks: see the settings
            cells = [f"{c} *" if i in (4, 5, 9, 10) and c != "—" else c for i, c in enumerate(cells)]
        trips = row.samples.get("W3 trips")
        cells.append(f"{trips[0]:.0f}" if trips else "—")
        out.append("| " + " | ".join(cells) + " |")
    if any(row.variant.cap for row in rows):
        out += ["", "\\* fewer tasks than the others (see Settings)."]
    out += ["", *ratio_table(rows), *depth_table(rows, s), *settings(rows), *problems(rows, failed)]
    out += machine_lines(info)
    return "\n".join(out) + "\n"


def ratio_table(rows: list[Row]) -> list[str]:
    runq = next((r for r in rows if r.library == "runq"), None)
    if runq is None:
        return []
    out = [
        "## runq against the best peer",
        "",
        "Ratio > 1: runq ahead (runq ÷ best peer for throughput, best peer ÷ runq for latency).",
        "",
        "| workload | runq | best peer | ratio | target (issue 24) | met |",
        "|---|---|---|---|---|---|",
    ]
    process = next((r for r in rows if r.library == "runq" and r.variant.name == "process pool"), None)
    lines = [(name, unit, higher, runq.samples.get(name), name) for name, unit, higher in COLUMNS]
    if process is not None:
        lines.insert(3, (PROCESS_POOL, "/s", True, process.samples.get("W2 total"), "W2 total"))
    for name, unit, higher, mine, column in lines:
        best = best_peer(rows, column, higher)
        if not mine or best is None:
            continue
        value = statistics.median(mine)
        ratio = value / best[0] if higher else best[0] / value
        out.append(
            f"| {name} | {fmt(value, unit)} {unit} | {fmt(best[0], unit)} {unit} ({best[1]}) | x{ratio:.2f} | "
            f"{TARGETS.get(name, '')} | {met(name, value, ratio, best_peer(rows, 'W1 single', True))} |"
        )
    return [*out, ""]


def met(name: str, value: float, ratio: float, best_single: tuple[float, str] | None = None) -> str:
    """Whether runq meets issue 24's target for workload ``name``."""
    checks = {
        "W1 single": ratio >= 1.3,
        "W1 bulk": best_single is not None and value >= 10 * best_single[0],
        "W2 total": ratio >= 3,
        PROCESS_POOL: ratio >= 1.5,
        "W3 p50": ratio > 1 and value < 1.0,
        "W3 p99": ratio > 1,
        "W4 steady": value >= 8_000,
    }
    if name not in checks:
        return ""
    return "yes" if checks[name] else "**no**"


def depth_table(rows: list[Row], sizes: Any) -> list[str]:
    runq = next((r for r in rows if r.library == "runq"), None)
    if runq is None or not any(key.startswith("W5") for key in runq.samples):
        return []
    out = [
        "## W5 (runq only): queue depth",
        "",
        "Drain with 2 `runq worker --pool thread` processes, N tasks queued, from worker launch to the last "
        "completion (counted by runq's own `succeeded` counter, no INCR); memory = Redis `used_memory` delta / N "
        "after enqueuing N.",
        "",
        "| queued | Redis drain /s | Redis bytes per queued task | SQLite drain /s |",
        "|---|---|---|---|",
    ]
    for n in sizes.depths:
        out.append(
            f"| {n:,} | {cell(runq.samples.get(f'W5 redis {n:,}', []), '/s')} | "
            f"{cell(runq.samples.get(f'W5 bytes/task {n:,}', []), 'B')} | "
            f"{cell(runq.samples.get(f'W5 sqlite {n:,}', []), '/s')} |"
        )
    low, high = sizes.depths[0], sizes.depths[-1]
    rate = {n: runq.samples.get(f"W5 redis {n:,}") for n in (low, high)}
    if rate[low] and rate[high] and high > low:
        share = statistics.median(rate[high]) / statistics.median(rate[low])
        out += [
            "",
            f"Drain rate at {high:,} queued = {share:.0%} of the rate at {low:,} (target ≥ 80 % at 1,000,000); "
            "Redis memory target ≤ 400 bytes per queued no-op task; SQLite drain target ≥ 5,000/s.",
        ]
    return [*out, ""]


def settings(rows: list[Row]) -> list[str]:
    out = ["## Settings", "", "| library | version | worker command and settings |", "|---|---|---|"]
    for row in rows:
        out.append(f"| {row.label} | {row.version} | {row.variant.settings} |")
    out += [
        "",
        "Every worker runs without per-task log lines (runq `RUNQ_LOG_LEVEL=WARNING`, `rq --quiet`, "
        "`huey_consumer -q`, Celery `--loglevel WARNING` (its default), taskiq `--log-level WARNING`, "
        "arq's logger set to WARNING at start-up, SAQ and Dramatiq log no task lines by default). "
        "Everything else is each library's default.",
        "",
    ]
    return out


def problems(rows: list[Row], failed: dict[str, str]) -> list[str]:
    lines = [f"- {name}: could not run: {why}" for name, why in failed.items()]
    for row in rows:
        lines += [f"- {row.label}: {error}" for error in sorted(set(row.errors))]
    return ["## Errors", "", *lines, ""] if lines else []


def machine_lines(info: dict[str, Any]) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in info["load"])
    return [
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores; {info['os']}",
        f"- Python {info['python']}; redis-server {info['redis']} (private, on a free port, FLUSHALL between runs)",
        f"- load average at the end of the run: {load}",
    ]
