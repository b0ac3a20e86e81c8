"""``runq bench``: the quick smoke version of the benchmark workloads (CI runs this, not the comparison)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runq.cli.bench import Latency, percentile

ROOT = Path(__file__).resolve().parent.parent


def test_runq_bench_smoke_on_sqlite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RUNQ_URL", "RUNQ_BENCH_COUNTER")}
    done = subprocess.run(
        [sys.executable, "-m", "runq", "bench", "--tasks", "60", "--round-trips", "5", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["url"].startswith("sqlite:///") and report["tasks"] == 60 and report["workers"] == 2
    assert report["enqueue"] > 0 and report["enqueue_bulk"] > 0
    for name in ("drain", "io_bound"):
        assert report[name]["tasks"] == 60
        assert report[name]["seconds"] > 0 and report[name]["rate"] > 0
    trip = report["round_trip"]
    assert 0 < trip["p50"] <= trip["p95"] <= trip["p99"]
    assert not list(tmp_path.iterdir())  # a temporary file, never ./runq.db


def test_runq_bench_plain_table(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RUNQ_URL"}
    url = f"sqlite:///{tmp_path / 'b.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "runq", "bench", "--tasks", "20", "--round-trips", "2", "--url", url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["workload", "result", "detail"])
    workloads = [" ".join(line.split()[:2]) for line in lines[header + 1 :]]
    assert workloads == ["W1 enqueue", "W1 bulk", "W2 drain", "W3 round", "W4 io-bound"]


def test_bad_sizes_are_usage_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runq", "bench", "--tasks", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_percentiles_interpolate() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    latency = Latency.of([float(i) for i in range(101)])
    assert (latency.p50, latency.p95, latency.p99) == (50.0, 95.0, 99.0)


@pytest.mark.parametrize(
    "module",
    [
        "bench.__main__",
        "bench.harness",
        "bench.cost",
        "bench.postgres",
        "bench.sqlite",
        "bench.drain",
        "bench.limited",
        "bench.shards",
        "bench.aio",
        "bench.report",
        "bench.peers.runq_app",
        "bench.peers.runq_postgres_app",
        "bench.peers.runq_sqlite_app",
    ],
)
def test_the_benchmarks_import(module: str) -> None:
    """The benchmarks are not run in CI, but they must keep up with the package's layout (runq's
    own adapters once imported a module that had moved, and the comparison ran without runq)."""
    importlib.import_module(module)
