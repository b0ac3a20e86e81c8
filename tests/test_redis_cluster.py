"""Redis Cluster specifics on the session's real cluster (3 masters, 1 replica each).

The conformance, conformance-flow, worker and workflow suites already run on it (the
"redis-cluster" broker parameter, tests/conftest.py); these tests show what only a cluster
has: queues spread over masters, and one worker draining queues that live on different shards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

import runq
from runq.brokers.redis import queue_keys
from runq.errors import BrokerUnavailable
from tests import scale_tasks as tasks
from tests.conftest import WorkerProcess, wait_until
from tests.scale_tasks import run_counts
from tests.support.servers import RedisCluster


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


# -- faults: each test gets a cluster of its own ------------------------------------------


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """Redis's default node timeout (15 s): a loaded machine causes no failover."""
    cluster = RedisCluster(tmp_path / "own-cluster")
    yield cluster
    cluster.kill()


@pytest.fixture
def quick_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A replica takes over after its master is silent for 1.5 s, for the failover test."""
    cluster = RedisCluster(tmp_path / "quick-cluster", node_timeout=1500)
    yield cluster
    cluster.kill()


def _enqueue(app: runq.App, log: str, queues: list[str], total: int) -> list[str]:
    """``total`` ``runs`` tasks spread over ``queues``, enqueued in batches of 500."""
    ids: list[str] = []
    task = tasks.runs
    for start in range(0, total, 500):
        batch = [task.options(queue=queues[i % len(queues)]).s(log) for i in range(start, min(total, start + 500))]
        ids += [handle.id for handle in app.enqueue_many(batch)]
    return ids


def _succeeded(app: runq.App, queues: list[str]) -> int:
    try:
        stats = app.stats()
    except BrokerUnavailable:
        return -1
    return sum(stats.queues[q].succeeded for q in queues if q in stats.queues)


def test_a_master_killed_during_a_drain_of_10000_loses_nothing(
    quick_cluster: RedisCluster, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """SIGKILL the master of one of three busy queues; its replica promotes itself after the
    node timeout. Enqueues waited for a replica (``wait_replicas=1``), so every task is there;
    work the dead master acknowledged but had not passed on is redone (counted, printed)."""
    queues = _spread(quick_cluster)
    log = str(tmp_path / "runs.log")
    app = runq.App(quick_cluster.url + "?wait_replicas=1&wait_timeout_ms=5000")
    try:
        ids = _enqueue(app, log, queues, 10_000)
        for _ in range(2):
            start_worker(
                quick_cluster.url,
                "-Q",
                ",".join(queues),
                "--pool",
                "thread",
                "-c",
                "8",
                "--lease",
                "3",
                app="tests.scale_tasks:app",
            )
        wait_until(lambda: len(run_counts(log)) >= 2000, timeout=120)
        victim = quick_cluster.node_of(queue_keys(queues[0]).pending)
        replica = quick_cluster.replica_of(victim)
        before = sum(1 for task_id in run_counts(log) if task_id.startswith(queues[0] + "."))
        killed = time.monotonic()
        victim.kill()
        wait_until(
            lambda: quick_cluster.node_of(queue_keys(queues[0]).pending).port == replica.port, timeout=60, interval=0.1
        )
        promoted = time.monotonic() - killed
        wait_until(lambda: sum(1 for t in run_counts(log) if t.startswith(queues[0] + ".")) > before + 100, timeout=45)
        resumed = time.monotonic() - killed
        wait_until(lambda: _succeeded(app, queues) == len(ids), timeout=300, interval=0.5)
        counts = run_counts(log)
        assert set(counts) == set(ids)  # every task ran and succeeded; nothing else ran
        duplicates = sum(counts.values()) - len(ids)
        print(
            f"cluster failover: promoted after {promoted:.1f} s, shard working again after {resumed:.1f} s;"
            f" {len(ids)} tasks, {duplicates} ran twice"
        )
        assert duplicates <= 200  # only what was claimed or settled in flight at the kill
    finally:
        app.close()


def test_a_busy_queue_moved_to_another_master_mid_drain_runs_each_task_once(
    own_cluster: RedisCluster, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """Reshard the slot of a queue being drained (IMPORTING / MIGRATING, MIGRATE its keys, SETSLOT
    NODE): calls meet ASK, TRYAGAIN and then MOVED; every task succeeds, and is settled once."""
    queue = _spread(own_cluster, 1)[0]
    key = queue_keys(queue).pending
    log = str(tmp_path / "runs.log")
    app = runq.App(own_cluster.url)
    try:
        ids = _enqueue(app, log, [queue], 3000)
        start_worker(own_cluster.url, "-Q", queue, "--pool", "thread", "-c", "8", app="tests.scale_tasks:app")
        wait_until(lambda: len(run_counts(log)) >= 500, timeout=120)
        source = own_cluster.node_of(key)
        target = next(node for node in own_cluster.masters() if node.port != source.port)
        moved = own_cluster.move_slot(key_slot(key.encode()), source, target)
        assert own_cluster.node_of(key).port == target.port and moved > 0
        ran_before_move_ended = len(run_counts(log))
        wait_until(lambda: _succeeded(app, [queue]) == len(ids), timeout=180, interval=0.5)
        counts = run_counts(log)
        assert set(counts) == set(ids)
        assert app.stats().counters["succeeded"] == len(ids)  # settled once each: the counter counts settles
        duplicates = sum(counts.values()) - len(ids)
        print(
            f"reshard: {moved} keys moved with {ran_before_move_ended} of {len(ids)} tasks run; {duplicates} ran twice"
        )
        assert duplicates == 0
    finally:
        app.close()


def test_wait_replicas_on_a_cluster(own_cluster: RedisCluster) -> None:
    """``?wait_replicas=1``: the enqueue returns once the queue's replica holds the task; with
    that replica stopped it raises BrokerUnavailable, and the task is on the master all the same."""
    queue = _spread(own_cluster, 1)[0]
    master = own_cluster.node_of(queue_keys(queue).pending)
    replica = own_cluster.replica_of(master)
    # Acknowledged: patient (a loaded machine's replica may take more than 300 ms to confirm).
    patient = runq.App(own_cluster.url + "?wait_replicas=1&wait_timeout_ms=10000")
    app = runq.App(own_cluster.url + "?wait_replicas=1&wait_timeout_ms=300")
    try:
        first = patient.enqueue("add", (1, 1), queue=queue)
        with own_cluster.client(replica) as client:  # already there: WAIT returned after the replica had it
            client.execute_command("READONLY")  # a replica answers reads of its slots instead of MOVED
            assert client.hexists(queue_keys(queue).payloads, first.id)
        replica.kill()
        with pytest.raises(BrokerUnavailable, match=r"of wait_replicas=1 replicas acknowledged it within 300 ms"):
            app.enqueue("add", (2, 2), queue=queue)
        assert app.stats().queues[queue].pending == 2
    finally:
        patient.close()
        app.close()


def test_function_calls_find_their_slot_without_asking_a_node(cluster: RedisCluster) -> None:
    """redis-py would send ``COMMAND GETKEYS`` to its default node before every FCALL: a round
    trip more, and every call failing while that node is down (connection.FunctionsCluster)."""

    def getkeys() -> int:
        total = 0
        for node in cluster.alive:
            with cluster.client(node) as client:
                total += int(client.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0))
        return total

    before = getkeys()
    app = runq.App(cluster.url)
    try:
        for queue in _spread(cluster):
            app.enqueue("add", (1, 2), queue=queue)
        assert app.stats().counters["enqueued"] == 3
    finally:
        app.close()
    assert getkeys() == before
