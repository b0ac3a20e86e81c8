"""Retained finished tasks and the broker store's bytes, in ``runq metrics`` and on /metrics.

A finished task is kept for its result_ttl (failed ones until purged), and that is most of
what a busy broker holds (docs/reliability.md, "Retention"): every broker reports how many it
keeps, and the bytes its store takes where it can say (not ``memory://``, nor a Redis user
without ``INFO``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import runq
from runq.brokers.base import Broker
from runq.cli import main
from runq.dashboard.metrics import create_registry
from runq.models import Message, Outcome, new_task_id
from tests.conftest import CONFORMANCE

BROKER_KINDS = [*CONFORMANCE, "redis-acl"]
SIZED = {"sqlite", "redis", "postgres", "redis-cluster", "valkey"}  # the others cannot say (None)
TASKS = 300


@pytest.fixture
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.node.callspec.params["broker_url"])


@pytest.fixture
def app(broker_url: str) -> Iterator[runq.App]:
    application = runq.App(broker_url)
    yield application
    application.close()


def finish(broker: Broker, count: int, kind: str = "succeeded") -> None:
    broker.enqueue([Message(new_task_id("default"), "noop", "default") for _ in range(count)], 60.0)
    while claims := broker.claim(["default"], "w", 100, 30.0):
        error = {"type": "E", "message": "m"} if kind == "failed" else None
        result = None if error else "null"
        assert all(broker.settle([Outcome(c.id, c.token, kind, result=result, error=error) for c in claims]))  # type: ignore[arg-type]


def scraped(app: runq.App) -> dict[str, float]:
    text = generate_latest(create_registry(app)).decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_retained_tasks_and_storage_bytes_grow_with_finished_tasks(app: runq.App, broker_url: str, kind: str) -> None:
    broker = app.broker
    finish(broker, 1)
    before = broker.storage_bytes()
    finish(broker, TASKS)
    finish(broker, 2, "failed")
    after = broker.storage_bytes()
    retained = TASKS + 3
    if kind in SIZED:
        # A store's size also moves on its own: a cluster's six nodes once gave back ~70 KB of
        # buffers while 303 tasks (~100 KB) were kept. More finished tasks until the growth shows.
        while before is not None and after is not None and after <= before and retained < 10 * TASKS:
            finish(broker, TASKS)
            retained += TASKS
            after = broker.storage_bytes()
        assert before is not None and after is not None and after > before, (before, after)
    else:
        assert before is None and after is None

    samples = scraped(app)
    assert samples['runq_retained_tasks{"queue": "default"}'] == retained
    stored = samples.get("runq_broker_storage_bytes{}")
    assert (stored is not None) == (kind in SIZED)
    if stored is not None:
        assert stored >= after * 0.5  # the store may have changed a little between the two reads

    done = CliRunner().invoke(main, ["metrics", "--url", broker_url, "--json"], catch_exceptions=False)
    if kind == "memory":  # memory:// is per process: a new App sees nothing; the key is still there
        assert json.loads(done.stdout)["retained"]["tasks"] == 0
        return
    reported = json.loads(done.stdout)["retained"]
    assert reported["tasks"] == retained
    assert (reported["storage_bytes"] is not None) == (kind in SIZED)
    text = CliRunner().invoke(main, ["metrics", "--url", broker_url], catch_exceptions=False).stdout
    assert f"retained {retained:,} finished tasks" in text
