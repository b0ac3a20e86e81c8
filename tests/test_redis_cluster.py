"""Redis Cluster specifics on the session's real cluster (3 masters, 1 replica each).

The conformance, conformance-flow, worker and workflow suites already run on it (the
"redis-cluster" broker parameter, tests/conftest.py); these tests show what only a cluster
has: queues spread over masters, and one worker draining queues that live on different shards.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.crc import key_slot

import runq
from runq.brokers.redis import queue_keys
from runq.testing import RedisCluster
from tests.conftest import WorkerProcess, wait_until


def _spread(cluster: RedisCluster, count: int = 3) -> list[str]:
    """Queue names whose keys live on ``count`` different masters (asked of the cluster)."""
    chosen: dict[int, str] = {}
    for i in range(200):
        name = f"shard-{i}"
        chosen.setdefault(cluster.node_of(queue_keys(name).pending).port, name)
        if len(chosen) == count:
            return list(chosen.values())
    raise AssertionError("200 names did not cover the masters")


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    redis_cluster.flush()
    return redis_cluster


def test_three_queues_land_on_three_masters(cluster: RedisCluster) -> None:
    queues = _spread(cluster)
    app = runq.App(cluster.url)
    try:
        for queue in queues:
            app.enqueue("add", (1, 2), queue=queue)
    finally:
        app.close()
    masters = {queue: cluster.node_of(queue_keys(queue).pending) for queue in queues}
    assert len({node.port for node in masters.values()}) == 3
    for queue, node in masters.items():  # the task really is stored on that master, and only there
        with cluster.client(node) as client:
            assert client.zcard(queue_keys(queue).pending) == 1
        for other in cluster.masters():
            if other.port != node.port:
                with cluster.client(other) as client:
                    assert (
                        client.execute_command(
                            "CLUSTER", "COUNTKEYSINSLOT", key_slot(queue_keys(queue).pending.encode())
                        )
                        == 0
                    )


def test_one_worker_drains_queues_on_every_shard(
    cluster: RedisCluster, start_worker: Callable[..., WorkerProcess]
) -> None:
    queues = _spread(cluster)
    app = runq.App(cluster.url)
    try:
        handles = [app.enqueue("add", (i, n), queue=queue) for n, queue in enumerate(queues) for i in range(30)]
        worker = start_worker(cluster.url, "-Q", ",".join(queues), "--pool", "thread", "-c", "4")
        assert [h.result(timeout=60) for h in handles] == [i + n for n in range(3) for i in range(30)]
        wait_until(lambda: all(app.stats().queues[q].succeeded == 30 for q in queues))
        assert worker.proc.poll() is None, worker.output()
    finally:
        app.close()
