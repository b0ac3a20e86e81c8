"""Redis: a finished record is stored compact, and a record an older runq wrote still reads.

A finished task is kept for its result_ttl, so its record is most of what a busy Redis
holds (bench/retention.py); lib.lua stores it with one-letter names. These tests pin the
stored form's size and that the long form (every runq before it) reads, retries and
answers a repeated settle exactly as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

import runq
from runq.brokers.redis import RedisBroker, queue_keys
from runq.models import Outcome, Status
from tests.conftest import RedisServer

KEYS = queue_keys("default")


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[runq.App]:
    redis_server.flush()
    application = runq.App(redis_server.url)
    yield application
    application.close()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield connection
    connection.close()


def finish(app: runq.App, kind: str = "succeeded") -> tuple[str, str]:
    """Enqueue a task, claim it and settle it as ``kind``: its id and the claim's token."""
    handle = app.enqueue("add", args=[1, 2])
    [claim] = app.broker.claim(("default",), "worker-1", 1, 30)
    error = {"type": "ValueError", "message": "no", "traceback": ""} if kind == "failed" else None
    assert app.broker.settle([Outcome(claim.id, claim.token, kind, result="3" if error is None else None, error=error)])  # type: ignore[arg-type]
    return handle.id, claim.token


def as_older_runq_wrote(record: dict[str, object]) -> dict[str, object]:
    """The long form of a compact record: what every runq before the compact one stored."""
    names = {
        "S": "status", "A": "attempts", "P": "priority", "Q": "seq", "R": "result", "E": "error",
        "W": "worker", "T": "settled", "N": "enqueued_at", "B": "started_at", "F": "finished_at",
        "X": "expires_at", "L": "result_ttl", "G": "progress",
    }  # fmt: skip
    status = {"s": "succeeded", "f": "failed", "c": "cancelled"}
    long = {names.get(name, name): value for name, value in record.items()}
    long["status"] = status[str(long["status"])]
    long.setdefault("priority", 0)
    long["score"], long["ready_at"] = "1759218604443711", long["enqueued_at"]
    return long


def test_a_finished_record_is_stored_compact(app: runq.App, client: redis.Redis) -> None:
    task_id, token = finish(app)
    raw = client.hget(KEYS.tasks, task_id)
    record = json.loads(raw)
    assert record["S"] == "s" and record["R"] == "3" and record["W"] == "worker-1" and record["T"] == token
    assert not {"status", "score", "ready_at", "P"} & record.keys()
    assert len(raw) < 200  # the long form of the same record is about 330 bytes
    info = app.info(task_id)
    assert info is not None and info.status is Status.SUCCEEDED and info.result == 3 and info.worker == "worker-1"
    assert info.started_at and info.finished_at and info.enqueued_at


@pytest.mark.parametrize("kind", ["succeeded", "failed"])
def test_a_record_an_older_runq_wrote_reads_as_before(app: runq.App, client: redis.Redis, kind: str) -> None:
    task_id, token = finish(app, kind)
    compact = app.info(task_id)
    client.hset(KEYS.tasks, task_id, json.dumps(as_older_runq_wrote(json.loads(client.hget(KEYS.tasks, task_id)))))
    assert app.info(task_id) == compact
    assert [t.id for t in app.list(kind)] == [task_id]
    # A repeat of the settle that ended it is still recognised (answered as applied, nothing changes).
    assert app.broker.settle([Outcome(task_id, token, "succeeded", result="9")]) == [True]
    assert app.info(task_id) == compact
    if kind == "failed":  # and a retry by hand puts it back, to run and end again, compact now
        assert app.retry(task_id)
        [claim] = app.broker.claim(("default",), "worker-2", 1, 30)
        assert claim.id == task_id and claim.attempt == 1
        assert app.broker.settle([Outcome(claim.id, claim.token, "succeeded", result="4")])
        info = app.info(task_id)
        assert info is not None and info.status is Status.SUCCEEDED and info.result == 4
        assert json.loads(client.hget(KEYS.tasks, task_id))["S"] == "s"


def test_a_compact_record_keeps_a_priority_and_a_progress(app: runq.App, client: redis.Redis) -> None:
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    handle = app.enqueue("add", args=[1, 2], priority=7)
    [claim] = broker.claim(("default",), "w", 1, 30)
    broker.progress([runq.models.ProgressReport(claim.id, claim.token, 0.5, "half")])
    assert broker.settle([Outcome(claim.id, claim.token, "failed", error={"type": "E", "message": "m"})])
    record = json.loads(client.hget(KEYS.tasks, handle.id))
    assert record["P"] == 7 and record["S"] == "f"
    info = app.info(handle.id)
    assert info is not None and info.priority == 7 and info.progress is not None and info.progress.message == "half"
    assert app.retry(handle.id)
    [again] = broker.claim(("default",), "w", 1, 30)
    assert again.id == handle.id  # back at its priority: a retry reads it from the compact record
