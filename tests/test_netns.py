"""A worker on "another host": Redis and the worker in two Linux network namespaces joined by
a veth pair, and a network partition made by taking the worker's link down.

Needs root (``ip netns``); skipped with the reason otherwise. Only addresses inside the two
namespaces the test creates are used; processes in the test's own namespace reach that Redis
through its unix socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import runq
from tests.conftest import WorkerProcess, wait_until
from tests.scale_tasks import run_counts
from tests.support.servers import NetnsPair


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[NetnsPair]:
    if shutil.which("ip") is None or shutil.which("redis-server") is None:
        pytest.skip("needs iproute2 (ip) and redis-server")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add)")
    try:
        pair = NetnsPair(tmp_path)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"ip netns is not permitted here: {exc.stderr.decode(errors='replace').strip()}")
    yield pair
    pair.remove()


def test_a_partitioned_worker_is_fenced_and_carries_on(
    hosts: NetnsPair, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    remote_url = hosts.redis()
    log = str(tmp_path / "runs.log")
    app = runq.App(hosts.local_url)
    try:
        handles = [app.enqueue("where", (log, 3.0)) for _ in range(4)]
        remote = start_worker(
            remote_url,
            "--pool",
            "thread",
            "-c",
            "4",
            "--lease",
            "2",
            app="tests.scale_tasks:app",
            prefix=hosts.exec_prefix(hosts.client_ns),
        )
        wait_until(lambda: len(run_counts(log)) == 4, timeout=60)  # the remote worker runs all four
        hosts.link(False)  # partition: it can neither renew nor settle
        local = start_worker(
            hosts.local_url, "--pool", "thread", "-c", "4", "--lease", "2", app="tests.scale_tasks:app"
        )
        results = [h.result(timeout=60) for h in handles]  # taken over once the 2 s leases ran out
        assert results == [local.pid] * 4
        assert all(n == 2 for n in run_counts(log).values())  # each ran on both hosts

        hosts.link(True)  # the remote worker's late outcomes arrive and are refused
        wait_until(lambda: remote.output().count("late outcome rejected") == 4, timeout=60, interval=0.2)
        assert app.stats().counters["succeeded"] == 4  # settled once each
        assert [h.result(timeout=5) for h in handles] == [local.pid] * 4  # the results stand

        local.stop()  # now only the remote worker is left: it reconnected and goes on
        after = [app.enqueue("where", (log, 0.0)) for _ in range(3)]
        assert [h.result(timeout=60) for h in after] == [remote.pid] * 3
    finally:
        app.close()
