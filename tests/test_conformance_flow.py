"""Conformance for flow control (issue 6) on every broker: ``after``, ticks, rate limits, breakers.

Driven through the Broker interface as a worker would, so the rules are checked without
worker timing. Real workers run the same features in test_workflows.py and test_schedule.py.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest

import runq
from runq.brokers import Broker
from runq.models import Claim, Outcome, Status
from tests.conftest import CONFORMANCE, wait_until

# Every broker (memory:// included), and Redis once more as a user with only the minimal ACL (README).
BROKER_KINDS = [*CONFORMANCE, "redis-acl"]

WORKER = "test-worker"


def take(broker: Broker, *queues: str) -> Claim:
    claims = broker.claim(queues or ("default",), WORKER, 1, 30.0)
    assert len(claims) == 1, claims
    return claims[0]


def settle(broker: Broker, claim: Claim, kind: str, value: Any = None) -> None:
    result = json.dumps(value) if kind == "succeeded" else None
    error = {"type": "RuntimeError", "message": "boom"} if kind == "failed" else None
    assert broker.settle([Outcome(claim.id, claim.token, kind, result=result, error=error)]) == [True]  # type: ignore[arg-type]


def info(app: runq.App, task_id: str) -> runq.TaskInfo:
    found = app.info(task_id)
    assert found is not None, task_id
    return found


# -- after= ------------------------------------------------------------------------------------


def test_child_waits_for_every_parent_then_becomes_pending(app: runq.App, broker: Broker) -> None:
    first, second = app.enqueue("add", args=[1, 1]), app.enqueue("add", args=[2, 2])
    child = app.enqueue("noop", after=[first, second.id])
    assert info(app, child.id).status is Status.WAITING
    assert app.stats().queues["default"].waiting == 1
    settle(broker, take(broker), "succeeded", 2)
    assert info(app, child.id).status is Status.WAITING
    settle(broker, take(broker), "succeeded", 4)
    assert info(app, child.id).status is Status.PENDING
    assert take(broker).id == child.id


def test_failed_parent_cancels_dependents_and_theirs(app: runq.App, broker: Broker) -> None:
    parent = app.enqueue("add", args=[1, 1])
    child = app.enqueue("noop", after=[parent])
    grandchild = app.enqueue("noop", after=[child])
    settle(broker, take(broker), "failed")
    child_info, grandchild_info = info(app, child.id), info(app, grandchild.id)
    assert child_info.status is Status.CANCELLED and grandchild_info.status is Status.CANCELLED
    assert child_info.error is not None and parent.id in child_info.error["message"]
    assert child_info.error["type"] == "DependencyFailed" and "failed" in child_info.error["message"]
    assert grandchild_info.error is not None and child.id in grandchild_info.error["message"]
    with pytest.raises(runq.TaskCancelled, match=parent.id):
        grandchild.result(timeout=10)
    assert app.stats().counters["cancelled"] == 2


def test_dependents_in_other_queues(app: runq.App, broker: Broker) -> None:
    parent = app.enqueue("add", args=[1, 1], queue="a")
    child = app.enqueue("noop", queue="b", after=[parent])
    doomed = app.enqueue("noop", queue="c", after=[child])
    assert info(app, child.id).status is Status.WAITING
    settle(broker, take(broker, "a"), "succeeded", 2)
    assert info(app, child.id).status is Status.PENDING
    settle(broker, take(broker, "b"), "failed")
    assert info(app, doomed.id).status is Status.CANCELLED


def test_parent_already_final_at_enqueue(app: runq.App, broker: Broker) -> None:
    done = app.enqueue("add", args=[1, 1], queue="a")
    settle(broker, take(broker, "a"), "succeeded", 2)
    bad = app.enqueue("add", args=[1, 1], queue="a")
    settle(broker, take(broker, "a"), "failed")
    for queue in ("a", "b"):  # same queue (one script) and another queue (a second call)
        assert info(app, app.enqueue("noop", queue=queue, after=[done]).id).status is Status.PENDING
        cancelled = info(app, app.enqueue("noop", queue=queue, after=[done, bad]).id)
        assert cancelled.status is Status.CANCELLED and bad.id in cancelled.error["message"]  # type: ignore[index]
        ghost = app.handle(f"{queue}.{'0' * 32}")
        assert info(app, app.enqueue("noop", queue=queue, after=[ghost]).id).status is Status.CANCELLED


def test_cancel_cascades_across_queues(app: runq.App, broker: Broker) -> None:
    parent = app.enqueue("add", args=[1, 1], queue="a")
    here, there = app.enqueue("noop", queue="a", after=[parent]), app.enqueue("noop", queue="b", after=[parent])
    assert parent.cancel()
    for child in (here, there):
        found = info(app, child.id)
        assert found.status is Status.CANCELLED and "cancelled" in found.error["message"]  # type: ignore[index]


def test_delay_counts_from_enqueue_and_a_cancelled_child_is_left_alone(app: runq.App, broker: Broker) -> None:
    parent = app.enqueue("add", args=[1, 1])
    delayed = app.enqueue("noop", after=[parent], delay=60)
    dropped = app.enqueue("noop", after=[parent])
    assert dropped.cancel()
    settle(broker, take(broker), "succeeded", 2)
    assert info(app, delayed.id).status is Status.SCHEDULED
    assert info(app, dropped.id).status is Status.CANCELLED
    assert broker.claim(("default",), WORKER, 10, 30.0) == []


def test_enqueue_many_with_parents_earlier_in_the_batch(app: runq.App, broker: Broker) -> None:
    first = app.message("add", [1, 2], {}, runq.tasks.NO_OPTIONS)
    second = app.message("add", [3], {}, runq.tasks.Options(queue="b", after=(first.id,)))
    assert broker.enqueue([first, second], 60) == [first.id, second.id]
    assert info(app, second.id).status is Status.WAITING
    settle(broker, take(broker), "succeeded", 3)
    assert info(app, second.id).status is Status.PENDING


def test_a_step_left_in_the_outbox_is_applied_by_a_later_claim(
    app: runq.App, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not broker.url.startswith("redis"):
        pytest.skip("only Redis has a second call: the other brokers resolve dependents in the parent's transaction")
    parent = app.enqueue("add", args=[1, 1], queue="a")
    child = app.enqueue("noop", queue="b", after=[parent])
    claim = take(broker, "a")
    with monkeypatch.context() as patch:  # the worker dies between the settle script and its follow-up
        patch.setattr(type(broker), "apply_steps", lambda self, queue, steps: None)
        settle(broker, claim, "succeeded", 2)
    assert info(app, child.id).status is Status.WAITING
    # The step is handed out once it is OUTBOX_GRACE (5 s) old: any claim in queue a applies it.
    wait_until(lambda: broker.claim(("a",), WORKER, 1, 30.0) == [] and info(app, child.id).status is Status.PENDING, 20)


# -- release with a delay ------------------------------------------------------------------------


def test_release_with_delay_schedules_without_counting(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    claim = take(broker)
    assert broker.settle([Outcome(claim.id, claim.token, "release", delay=30, uncount=True)]) == [True]
    found = info(app, handle.id)
    assert found.status is Status.SCHEDULED and found.attempts == 0 and found.eta is not None


# -- ticks, rate limits, breakers ---------------------------------------------------------------


def test_take_tick_once(broker: Broker) -> None:
    assert broker.take_tick("cleanup", "1700000000", 60)
    assert not broker.take_tick("cleanup", "1700000000", 60)
    assert broker.take_tick("cleanup", "1700000005", 60) and broker.take_tick("other", "1700000000", 60)


def test_rate_limit_hands_out_successive_slots(broker: Broker) -> None:
    assert broker.acquire_rate("mail", 10, 1) == 0
    waits = [broker.acquire_rate("mail", 10, 1) for _ in range(3)]
    assert 0 < waits[0] <= 0.1 and waits[0] < waits[1] < waits[2] <= 0.3  # 0.1 s apart, one by one
    assert broker.acquire_rate("other", 10, 1) == 0  # per task name
    wait_until(lambda: broker.acquire_rate("mail", 1000, 1) == 0, 5)  # the first slot comes free


def test_breaker_opens_holds_probes_and_closes(app: runq.App, broker: Broker) -> None:
    assert broker.breaker("api", "allow", 2, 1.0) == 0
    assert broker.breaker("api", "failure", 2, 1.0) == 0
    assert broker.breaker("api", "allow", 2, 1.0) == 0  # one failure: still closed
    broker.breaker("api", "failure", 2, 1.0)
    hold = broker.breaker("api", "allow", 2, 1.0)
    assert 0 < hold <= 1.0
    state = app.stats().breakers["api"]
    assert state["state"] == "open" and state["failures"] == 2 and state["open_until"] > time.time()
    wait_until(lambda: broker.breaker("api", "allow", 2, 1.0) == 0, 5)  # the probe
    assert app.stats().breakers["api"]["state"] == "half_open"
    assert broker.breaker("api", "allow", 2, 1.0) > 0  # one probe at a time
    broker.breaker("api", "failure", 2, 1.0)  # a failed probe opens it again
    assert app.stats().breakers["api"]["state"] == "open"
    wait_until(lambda: broker.breaker("api", "allow", 2, 1.0) == 0, 5)
    broker.breaker("api", "success", 2, 1.0)
    assert app.stats().breakers["api"] == {**app.stats().breakers["api"], "state": "closed", "failures": 0}
    assert broker.breaker("api", "allow", 2, 1.0) == 0


def test_a_link_left_in_the_outbox_is_applied_by_a_later_claim(
    app: runq.App, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not broker.url.startswith("redis"):
        pytest.skip("only Redis has a second call: the other brokers link a dependent in the enqueue transaction")
    parent = app.enqueue("add", args=[1, 1], queue="a")
    with monkeypatch.context() as patch:  # the producer dies between enqueue and linking the parent
        patch.setattr(type(broker), "apply_steps", lambda self, queue, steps: None)
        child = app.enqueue("noop", queue="b", after=[parent])
    settle(broker, take(broker, "a"), "succeeded", 2)  # the parent does not know its child yet
    assert info(app, child.id).status is Status.WAITING
    # A claim in the child's queue hands out the 5 s old link; it finds the parent done.
    wait_until(lambda: info(app, child.id).status is Status.PENDING or broker.claim(("b",), WORKER, 1, 30.0), 20)
    assert take(broker, "b").id == child.id


# -- after_final: released once every parent is final, whatever its end (batches, SPEC §11) ---


def final_child(app: runq.App, broker: Broker, parents: list[str], queue: str = "default") -> str:
    """A task waiting on ``parents`` in the after_final mode (a batch's summary step uses it)."""
    message = app.message("noop", [], {}, runq.tasks.Options(queue=queue, after=tuple(parents)))
    [task_id] = broker.enqueue([dataclasses.replace(message, after_final=True)], 60)
    return task_id


@pytest.mark.parametrize("layout", ["one queue", "four queues"])
def test_after_final_waits_for_every_parent_whatever_its_end(app: runq.App, broker: Broker, layout: str) -> None:
    qa, qb, qc, qd = ("default",) * 4 if layout == "one queue" else ("a", "b", "c", "d")
    ok, bad = app.enqueue("add", args=[1, 1], queue=qa), app.enqueue("add", args=[2, 2], queue=qb)
    dropped = app.enqueue("add", args=[3, 3], queue=qc, delay=60)
    parents = [ok.id, bad.id, dropped.id]
    sibling = app.enqueue("noop", queue=qd, after=parents)  # the default mode, beside it
    child = final_child(app, broker, parents, qd)
    grandchild = app.enqueue("noop", queue=qd, after=[child])
    settle(broker, take(broker, qa), "succeeded", 2)
    assert info(app, child).status is Status.WAITING
    settle(broker, take(broker, qb), "failed")
    assert info(app, sibling.id).status is Status.CANCELLED  # the default mode: cancelled at once
    assert info(app, child).status is Status.WAITING  # after_final: still waiting for the third
    assert dropped.cancel()
    assert info(app, child).status is Status.PENDING and info(app, child).error is None
    claims = broker.claim((qd,), WORKER, 10, 30.0)
    assert [c.id for c in claims] == [child]  # released once, alone
    assert info(app, grandchild.id).status is Status.WAITING
    settle(broker, claims[0], "succeeded")
    assert info(app, grandchild.id).status is Status.PENDING  # its own dependents: the default mode
    assert app.stats().counters["cancelled"] == 2  # the dropped parent and the sibling, never the child


def test_after_final_is_released_by_a_cancellation_cascade(app: runq.App, broker: Broker) -> None:
    root = app.enqueue("add", args=[1, 1], queue="a")
    middle = app.enqueue("noop", queue="b", after=[root])
    late = app.enqueue("noop", queue="c", after=[middle])
    here, there = final_child(app, broker, [middle.id, late.id], "c"), final_child(app, broker, [late.id], "d")
    settle(broker, take(broker, "a"), "failed")  # cancels middle, then late (another queue each)
    assert info(app, late.id).status is Status.CANCELLED
    for child, queue in ((here, "c"), (there, "d")):
        assert info(app, child).status is Status.PENDING
        assert [c.id for c in broker.claim((queue,), WORKER, 10, 30.0)] == [child]


def test_after_final_with_parents_already_final_at_enqueue(app: runq.App, broker: Broker) -> None:
    done, bad, dropped = (app.enqueue("add", args=[i, i], queue="a") for i in range(3))
    settle(broker, take(broker, "a"), "succeeded", 0)
    settle(broker, take(broker, "a"), "failed")
    assert dropped.cancel()
    for queue in ("a", "b"):  # same queue (one script) and another queue (a second call on Redis)
        ghost = f"{queue}.{'0' * 32}"  # gone (or never there): nothing left to wait for
        assert info(app, final_child(app, broker, [done.id, bad.id, dropped.id, ghost], queue)).status is Status.PENDING
        waiting = app.enqueue("add", args=[9, 9], queue=queue, delay=60)
        child = final_child(app, broker, [bad.id, waiting.id], queue)
        assert info(app, child).status is Status.WAITING
        assert waiting.cancel() and info(app, child).status is Status.PENDING


def test_after_final_resolve_step_is_repeatable(app: runq.App, broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    if not broker.url.startswith("redis"):
        pytest.skip("only Redis has a second call: the other brokers resolve dependents in the parent's transaction")
    parent = app.enqueue("add", args=[1, 1], queue="a")
    child = final_child(app, broker, [parent.id], "b")
    posted: list[tuple[str, list[Any]]] = []
    claim = take(broker, "a")
    with monkeypatch.context() as patch:  # keep the step the settle posts, to apply it twice
        patch.setattr(type(broker), "apply_steps", lambda self, queue, steps: posted.append((queue, list(steps))))
        settle(broker, claim, "failed")
    assert info(app, child).status is Status.WAITING and len(posted) == 1
    for _ in range(2):  # a crash between the step and its removal from the outbox: applied again
        broker.apply_steps(*posted[0])  # type: ignore[attr-defined]
    assert info(app, child).status is Status.PENDING
    assert [c.id for c in broker.claim(("b",), WORKER, 10, 30.0)] == [child]
    assert broker.claim(("b",), WORKER, 10, 30.0) == []
