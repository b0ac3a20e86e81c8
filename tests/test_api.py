"""The public surface and the pure pieces: names, settings, back-off, messages."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import runq
from runq.logs import mask_url
from runq.models import Message, new_task_id, queue_of
from runq.settings import Settings
from runq.tasks import Options
from runq.worker.policy import Policy, backoff_delay


def test_public_names_are_pinned() -> None:
    assert runq.__all__ == [
        "App",
        "BatchHandle",
        "BrokerUnavailable",
        "DrainResult",
        "Event",
        "GroupHandle",
        "Handle",
        "Limit",
        "Middleware",
        "Progress",
        "Retry",
        "RunqError",
        "Settings",
        "Signature",
        "SoftTimeout",
        "Stats",
        "Status",
        "Task",
        "TaskCancelled",
        "TaskContext",
        "TaskFailed",
        "TaskInfo",
        "TaskNotFound",
        "TaskOutcome",
        "WorkerInfo",
        "batch",
        "chain",
        "chord",
        "current",
        "group",
    ]
    assert sorted(runq.__all__) == runq.__all__


def test_settings_layers_defaults_env_and_arguments() -> None:
    assert Settings().url == "sqlite:///runq.db"
    env = {"RUNQ_URL": "redis://h:1/0", "RUNQ_QUEUES": "high, default", "RUNQ_LEASE": "5", "RUNQ_POOL": "THREAD"}
    settings = Settings.from_env(env, lease=7.5, concurrency=None)
    assert (settings.url, settings.queues, settings.lease, settings.pool) == (
        "redis://h:1/0",
        ("high", "default"),
        7.5,
        "thread",
    )
    with pytest.raises(ValueError, match="RUNQ_LEASE"):
        Settings.from_env({"RUNQ_LEASE": "soon"})
    with pytest.raises(ValueError, match="pool"):
        Settings(pool="fibers")
    with pytest.raises(ValueError):
        Settings(lease=0)


def test_backoff_doubles_up_to_the_cap_with_bounded_jitter() -> None:
    assert [backoff_delay(k, 2.0, 3600, False) for k in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert [backoff_delay(k, 0.01, 3600, False) for k in (1, 2, 3)] == [0.01, 0.02, 0.04]
    assert backoff_delay(20, 2.0, 60, False) == 60
    random.seed(1)
    samples = [backoff_delay(1, 2.0, 3600, True) for _ in range(1000)]
    assert all(2.0 <= s < 2.5 for s in samples) and max(samples) - min(samples) > 0.3


def test_policy_prefers_message_then_task_default_then_runq_default() -> None:
    app = runq.App("sqlite:///unused.db")

    @app.task(name="p", retries=7, timeout=3)
    def p() -> None: ...

    message = Message(id=new_task_id("default"), name="p", queue="default", backoff=0.5)
    policy = Policy.resolve(message, app.tasks["p"])
    assert (policy.retries, policy.timeout, policy.backoff, policy.backoff_max) == (7, 3, 0.5, 3600.0)
    assert Policy.resolve(message, None).retries == 3


def test_message_round_trip_and_malformed_payloads() -> None:
    message = Message(id=new_task_id("q"), name="n", queue="q", args=[1, "é"], kwargs={"a": None}, after=("x",))
    assert Message.decode(message.payload, message.id, "q") == message
    assert json.loads(Message(id="q.x", name="noop", queue="q").payload) == {"name": "noop"}
    for raw in ("not json", "[1]", '{"id": "x"}', '{"name":"n","args":{}}', '{"args":[]}', b"\xff"):
        with pytest.raises(ValueError):
            Message.decode(raw, "q.x", "q")


def test_ids_sort_by_creation_and_carry_the_queue() -> None:
    ids = [new_task_id("a.b-c_d") for _ in range(3)]
    assert {queue_of(i) for i in ids} == {"a.b-c_d"}
    assert len(set(ids)) == 3


def test_options_merge_keeps_the_latest_of_delay_or_eta() -> None:
    from datetime import datetime, timezone

    eta = datetime.now(timezone.utc)
    merged = Options.build({"delay": 5}).merge(Options.build({"eta": eta}))
    assert (merged.delay, merged.eta) == (None, eta)


def test_mask_url_hides_the_password() -> None:
    assert mask_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert mask_url("sqlite:///runq.db") == "sqlite:///runq.db"


def test_unreachable_sqlite_file_is_broker_unavailable(tmp_path: Path) -> None:
    app = runq.App(f"sqlite:///{tmp_path}/missing/dir/runq.db")
    with pytest.raises(runq.BrokerUnavailable):
        app.enqueue("noop")


def test_unknown_url_scheme() -> None:
    with pytest.raises(ValueError, match="unsupported broker URL"):
        _ = runq.App("amqp://localhost").broker


def test_current_outside_a_task() -> None:
    with pytest.raises(RuntimeError):
        runq.current()


def test_task_names_and_local_calls() -> None:
    app = runq.App("sqlite:///unused.db")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    assert double.name == f"{__name__}.test_task_names_and_local_calls.<locals>.double"
    assert double(4) == 8
    with pytest.raises(ValueError, match="already registered"):
        app.task(name=double.name)(lambda: None)
