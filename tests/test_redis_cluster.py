"""The conformance suite on a real three-master Redis Cluster (``redis+cluster://``).

A session fixture starts three ``redis-server --cluster-enabled yes`` on free loopback
ports and joins them with ``redis-cli --cluster create``; each test gets it emptied
(FLUSHALL on every master; the Functions library survives it).

Opt-in for now (``RUNQ_TEST_CLUSTER=1``): run alone, all of test_conformance.py passes on
the cluster; inside the full suite one of the three nodes did not answer within 10 s once
(not yet understood), so it is not part of ``make test`` yet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from runq.testing import RedisServer
from tests.test_conformance import *  # noqa: F403  (the same tests, on this module's broker_url)


class Cluster:
    def __init__(self, directory: Path) -> None:
        self.nodes = [
            RedisServer(directory / str(i), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            for i in range(3)
        ]
        try:
            self._join()
        except BaseException:
            self.kill()
            raise

    def _join(self) -> None:
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"], check=True, capture_output=True
        )
        deadline = time.monotonic() + 20
        while not all(self._ready(node.port) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ready")
            time.sleep(0.05)

    @staticmethod
    def _ready(port: int) -> bool:
        with redis.Redis(port=port, decode_responses=True) as client:
            return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def flush(self) -> None:
        for node in self.nodes:
            with redis.Redis(port=node.port) as client:
                client.flushall()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if os.environ.get("RUNQ_TEST_CLUSTER") != "1":
        pytest.skip("set RUNQ_TEST_CLUSTER=1 to run the conformance suite on a real Redis Cluster")
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server / redis-cli are not installed")
    root = tmp_path_factory.mktemp("cluster")
    for i in range(3):
        (root / str(i)).mkdir()
    cluster = Cluster(root)
    yield cluster
    cluster.kill()


@pytest.fixture(params=["redis-cluster"])
def broker_url(redis_cluster: Cluster) -> Iterator[str]:
    redis_cluster.flush()
    yield redis_cluster.url
