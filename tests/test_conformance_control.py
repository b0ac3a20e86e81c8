"""Conformance for SPEC §9 flow control on every broker: ``expires``, ``concurrency``,
``debounce``, queue pause, and a breaker driven by ``settle``'s outcome.

Driven through the Broker interface as a worker would (claims and settles by hand), so each
rule is checked without worker timing; tests/test_flow_workers.py runs them with real workers.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import runq
from runq.brokers import Broker
from runq.models import BreakerRule, Claim, Outcome, Status
from tests.conftest import CONFORMANCE, wait_until

# Every broker (memory:// included), and Redis once more as a user with only the minimal ACL (README).
BROKER_KINDS = [*CONFORMANCE, "redis-acl"]
WORKER = "test-worker"


def claim(broker: Broker, limit: int = 10, *queues: str, lease: float = 30.0) -> list[Claim]:
    return broker.claim(queues or ("default",), WORKER, limit, lease)


def settle(broker: Broker, found: Claim, kind: str = "succeeded", **fields: Any) -> bool:
    result = json.dumps(None) if kind == "succeeded" else None
    error = {"type": "RuntimeError", "message": "boom"} if kind in ("failed", "retry") else None
    [accepted] = broker.settle([Outcome(found.id, found.token, kind, result=result, error=error, **fields)])  # type: ignore[arg-type]
    return accepted


def info(app: runq.App, task_id: str) -> runq.TaskInfo:
    found = app.info(task_id)
    assert found is not None, task_id
    return found


def statuses(app: runq.App, handles: list[runq.Handle[Any]]) -> list[str]:
    return [info(app, h.id).status.value for h in handles]


# -- expires ---------------------------------------------------------------------------------


def test_a_task_past_its_deadline_is_cancelled_as_expired_at_claim(app: runq.App, broker: Broker) -> None:
    late = app.enqueue("noop", expires=0)
    fresh = app.enqueue("noop", expires=3600)
    claims = claim(broker)
    assert [c.id for c in claims] == [fresh.id]
    found = info(app, late.id)
    assert found.status is Status.CANCELLED and found.error is not None and found.error["type"] == "Expired"
    assert found.attempts == 0 and found.finished_at is not None
    assert [t.id for t in app.list("cancelled")] == [late.id]
    assert app.stats().counters["cancelled"] == 1
    with pytest.raises(runq.TaskCancelled):
        late.result(timeout=5)


def test_a_retry_due_after_the_deadline_never_starts(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop", expires=1.0)
    [first] = claim(broker)
    assert settle(broker, first, "retry", delay=3600)  # its retry is due long after it expires
    assert info(app, handle.id).status is Status.SCHEDULED
    wait_until(lambda: claim(broker) == [] and info(app, handle.id).status is Status.CANCELLED, 10)
    found = info(app, handle.id)
    assert found.error is not None and found.error["type"] == "Expired" and found.attempts == 1


def test_an_expired_task_cancels_its_dependents(app: runq.App, broker: Broker) -> None:
    parent = app.enqueue("noop", expires=0)
    child = app.enqueue("noop", queue="other", after=[parent])
    assert claim(broker) == []
    wait_until(lambda: info(app, child.id).status is Status.CANCELLED, 10)  # Redis: a step in the child's slot
    error = info(app, child.id).error
    assert error is not None and error["type"] == "DependencyFailed" and "expired" in error["message"]


def test_retry_by_hand_runs_an_expired_task(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop", expires=0)
    assert claim(broker) == []
    assert app.retry(handle.id)
    assert [c.id for c in claim(broker)] == [handle.id]


# -- concurrency -----------------------------------------------------------------------------


def test_a_slot_runs_at_most_its_limit_and_holds_the_rest_without_an_attempt(app: runq.App, broker: Broker) -> None:
    handles = [app.enqueue("work", args=[i], concurrency=2) for i in range(5)]
    claims = claim(broker)
    assert [c.id for c in claims] == [h.id for h in handles[:2]]
    held = [info(app, h.id) for h in handles[2:]]
    assert all(t.status is Status.SCHEDULED and t.attempts == 0 and t.eta is None for t in held)
    assert app.stats().queues["default"].scheduled == 3
    assert settle(broker, claims[0])
    assert statuses(app, handles) == ["succeeded", "running", "pending", "scheduled", "scheduled"]
    [third] = claim(broker)
    assert third.id == handles[2].id and third.attempt == 1
    assert claim(broker) == []  # two run: the rest stay held


def test_a_limit_per_key_counts_each_value_apart(app: runq.App, broker: Broker) -> None:
    limit = runq.Limit(1, key="user")
    ann = [app.enqueue("work", kwargs={"user": "ann", "n": i}, concurrency=limit) for i in range(2)]
    bob = [app.enqueue("work", kwargs={"user": "bob", "n": i}, concurrency=limit) for i in range(2)]
    assert {c.id for c in claim(broker)} == {ann[0].id, bob[0].id}
    assert statuses(app, [ann[1], bob[1]]) == ["scheduled", "scheduled"]
    other = app.enqueue("work", kwargs={"user": "cy"}, concurrency=limit)  # a key of its own
    assert [c.id for c in claim(broker)] == [other.id]


def test_held_tasks_are_released_by_priority_then_age(app: runq.App, broker: Broker) -> None:
    first = app.enqueue("work", args=[0], concurrency=1)
    low = app.enqueue("work", args=[1], concurrency=1)
    high = app.enqueue("work", args=[2], concurrency=1, priority=5)
    [running] = claim(broker)
    assert running.id == high.id  # the highest priority runs first
    assert statuses(app, [first, low]) == ["scheduled", "scheduled"]
    settle(broker, running)
    [then] = claim(broker)
    assert then.id == first.id  # then the oldest
    settle(broker, then, "failed")
    assert [c.id for c in claim(broker)] == [low.id]


@pytest.mark.parametrize("how", ["retry", "release", "cancel"])
def test_every_end_of_a_run_frees_its_seat(app: runq.App, broker: Broker, how: str) -> None:
    running, held = (app.enqueue("work", args=[i], concurrency=1) for i in range(2))
    [first] = claim(broker)
    assert first.id == running.id and info(app, held.id).status is Status.SCHEDULED
    if how == "cancel":
        assert app.cancel(running.id)
    else:
        assert settle(broker, first, how, delay=3600, uncount=how == "release")
    assert [c.id for c in claim(broker)] == [held.id]


def test_a_lost_lease_frees_the_seat_for_its_own_rerun(app: runq.App, broker: Broker) -> None:
    crashed, held = (app.enqueue("work", args=[i], concurrency=1) for i in range(2))
    [first] = claim(broker, lease=0.3)
    assert first.id == crashed.id
    # The worker died: at lease expiry its task runs again (a lost attempt), before the held one.
    again = wait_until(lambda: claim(broker), 10)
    assert [(c.id, c.attempt) for c in again] == [(crashed.id, 2)]
    assert info(app, held.id).status is Status.SCHEDULED
    settle(broker, again[0])
    assert [c.id for c in claim(broker)] == [held.id]


def test_an_expiring_held_task_is_cancelled_and_frees_nothing_it_did_not_hold(app: runq.App, broker: Broker) -> None:
    running = app.enqueue("work", args=[0], concurrency=1)
    doomed = app.enqueue("work", args=[1], concurrency=1, expires=0.5)
    waiting = app.enqueue("work", args=[2], concurrency=1)
    [first] = claim(broker)
    assert first.id == running.id and statuses(app, [doomed, waiting]) == ["scheduled", "scheduled"]
    wait_until(lambda: claim(broker) == [] and info(app, doomed.id).status is Status.CANCELLED, 10)
    assert info(app, waiting.id).status is Status.SCHEDULED  # the seat is still taken
    settle(broker, first)
    assert [c.id for c in claim(broker)] == [waiting.id]


# -- debounce --------------------------------------------------------------------------------


def test_debounce_replaces_a_task_that_has_not_started(app: runq.App, broker: Broker) -> None:
    first = app.enqueue("index", args=[1], key="doc-7", debounce=60)
    eta = info(app, first.id).eta
    assert info(app, first.id).status is Status.SCHEDULED and eta is not None
    time.sleep(0.01)  # (a clock step, so the moved eta is visibly later)
    again = app.enqueue("index", args=[2], key="doc-7", debounce=60)
    assert again.id == first.id
    found = info(app, first.id)
    assert found.args == [2] and found.status is Status.SCHEDULED and found.eta is not None and found.eta > eta
    assert app.stats().counters["enqueued"] == 1
    other = app.enqueue("index", args=[3], key="doc-8", debounce=60)
    assert other.id != first.id


def test_debounce_after_the_task_started_makes_a_new_one(app: runq.App, broker: Broker) -> None:
    first = app.enqueue("index", args=[1], key="doc-7", debounce=0.05)
    [started] = wait_until(lambda: claim(broker), 10)
    assert started.id == first.id
    second = app.enqueue("index", args=[2], key="doc-7", debounce=60)
    assert second.id != first.id and info(app, second.id).args == [2]
    third = app.enqueue("index", args=[3], key="doc-7", debounce=60)
    assert third.id == second.id and info(app, second.id).args == [3]


def test_debounce_moves_a_held_task_out_of_its_slot(app: runq.App, broker: Broker) -> None:
    running = app.enqueue("work", args=[0], concurrency=1)
    held = app.enqueue("work", args=[1], concurrency=1, key="k", debounce=0.05)
    [first] = wait_until(lambda: claim(broker), 10)
    assert first.id == running.id
    wait_until(lambda: claim(broker) == [] and info(app, held.id).eta is None, 10)  # due, then held
    assert app.enqueue("work", args=[2], concurrency=1, key="k", debounce=60).id == held.id
    found = info(app, held.id)
    assert found.args == [2] and found.eta is not None  # scheduled again, for its new eta
    settle(broker, first)
    assert claim(broker) == []  # no held task left to release: it waits for its eta


# -- pause -----------------------------------------------------------------------------------


def test_a_paused_queue_accepts_tasks_but_no_claim_takes_them(app: runq.App, broker: Broker) -> None:
    assert app.paused() == set()
    assert app.pause("mail") is True and app.pause("mail") is False
    assert app.paused() == {"mail"}
    handle = app.enqueue("send", queue="mail")
    other = app.enqueue("noop")
    assert [c.id for c in claim(broker, 10, "mail", "default")] == [other.id]
    assert info(app, handle.id).status is Status.PENDING
    assert app.resume("mail") is True and app.resume("mail") is False
    assert app.paused() == set()
    assert [c.id for c in claim(broker, 10, "mail")] == [handle.id]


def test_a_running_task_of_a_paused_queue_settles(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("send", queue="mail")
    [running] = claim(broker, 10, "mail")
    app.pause("mail")
    assert settle(broker, running)
    assert info(app, handle.id).status is Status.SUCCEEDED


def test_pause_is_kept_in_the_broker(app: runq.App, broker_url: str) -> None:
    app.pause("mail")
    if broker_url.startswith("memory"):
        assert app.paused() == {"mail"}  # one process: memory:// is its own broker
        return
    other = runq.App(broker_url)
    try:
        assert other.paused() == {"mail"}
    finally:
        other.close()


# -- a breaker driven by settle --------------------------------------------------------------


def test_settle_drives_the_outcome_s_breaker(app: runq.App, broker: Broker) -> None:
    rule = BreakerRule("api", 2, 60.0)
    for _ in range(2):
        app.enqueue("api")
    first, second = claim(broker)
    assert settle(broker, first, "retry", breaker=rule)
    assert app.stats().breakers["api"]["failures"] == 1
    assert settle(broker, first, "retry", breaker=rule)  # sent again (its reply was lost): counts once
    assert app.stats().breakers["api"] == {**app.stats().breakers["api"], "state": "closed", "failures": 1}
    assert settle(broker, second, "failed", breaker=rule)
    assert app.stats().breakers["api"]["state"] == "open"
    assert broker.breaker("api", "allow", 2, 60.0) > 0


def test_a_late_outcome_still_counts_for_the_breaker(app: runq.App, broker: Broker) -> None:
    rule = BreakerRule("api", 1, 60.0)
    handle = app.enqueue("api")
    [running] = claim(broker)
    assert app.cancel(handle.id)
    assert not settle(broker, running, "failed", breaker=rule)  # rejected: the task was cancelled
    assert app.stats().breakers["api"]["state"] == "open"  # but its run did fail


def test_a_success_closes_the_breaker_and_a_release_tells_it_nothing(app: runq.App, broker: Broker) -> None:
    rule = BreakerRule("api", 3, 60.0)
    for _ in range(3):
        app.enqueue("api")
    first, second, third = claim(broker)
    settle(broker, first, "retry", breaker=rule)
    settle(broker, second, "release", breaker=rule, uncount=True)
    assert app.stats().breakers["api"]["failures"] == 1
    settle(broker, third, "succeeded", breaker=rule)
    assert app.stats().breakers["api"] == {**app.stats().breakers["api"], "state": "closed", "failures": 0}
