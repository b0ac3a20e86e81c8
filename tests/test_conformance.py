"""One conformance suite for every broker: the rules of SPEC §3 and §4.

Each test drives the Broker interface (or the App on top of it) directly, as a
worker would, so the rules are checked without timing-sensitive worker runs.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import runq
from runq.brokers import Broker
from runq.models import Claim, Message, Outcome, Status, WorkerInfo, new_task_id, queue_of
from tests.conftest import CONFORMANCE, wait_until

# Every broker (memory:// included), and Redis once more as a user with only the minimal ACL (README).
BROKER_KINDS = [*CONFORMANCE, "redis-acl"]

WORKER = "test-worker"


def put(app: runq.App, name: str = "noop", *args: Any, **options: Any) -> str:
    return app.enqueue(name, args=list(args), **options).id


def take(broker: Broker, queues: tuple[str, ...] = ("default",), limit: int = 1, lease: float = 30.0) -> list[Claim]:
    return broker.claim(queues, WORKER, limit, lease)


def take_one(broker: Broker, **kwargs: Any) -> Claim:
    claims = take(broker, **kwargs)
    assert len(claims) == 1, claims
    return claims[0]


def succeed(broker: Broker, claim: Claim, value: Any = None, ttl: float = 60.0) -> bool:
    [ok] = broker.settle([Outcome(claim.id, claim.token, "succeeded", result=json.dumps(value), result_ttl=ttl)])
    return ok


def status(app: runq.App, task_id: str) -> Status:
    info = app.info(task_id)
    assert info is not None, task_id
    return info.status


# -- ids -----------------------------------------------------------------------------


def test_task_id_carries_queue_and_is_url_safe(app: runq.App) -> None:
    task_id = put(app, queue="emails")
    assert queue_of(task_id) == "emails"
    assert all(c.isalnum() or c in "-._~" for c in task_id)


def test_queue_of_rejects_foreign_ids() -> None:
    for bad in ("", "nodot", "q.short", "bad queue.0190a3f2c4d1e8f3a9b2c7d4e5f60718"):
        with pytest.raises(ValueError):
            queue_of(bad)


# -- enqueue and order ---------------------------------------------------------------


def test_enqueue_stores_a_pending_task(app: runq.App) -> None:
    handle = app.enqueue("echo", args=[1, "x"], kwargs={"k": [1, 2]}, priority=5)
    info = handle.info()
    assert info is not None
    assert (info.name, info.queue, info.status, info.priority) == ("echo", "default", Status.PENDING, 5)
    assert (info.args, info.kwargs, info.attempts) == ([1, "x"], {"k": [1, 2]}, 0)
    assert info.enqueued_at is not None and info.started_at is None
    assert handle.status() is Status.PENDING


def test_higher_priority_first_then_fifo(app: runq.App, broker: Broker) -> None:
    low = put(app, priority=-5)
    first_mid = put(app)
    high = put(app, priority=100)
    second_mid = put(app)
    lowest = put(app, priority=-100)
    order = [take_one(broker).id for _ in range(5)]
    assert order == [high, first_mid, second_mid, low, lowest]
    assert take(broker) == []


def test_claim_batch_respects_order_and_limit(app: runq.App, broker: Broker) -> None:
    ids = [put(app) for _ in range(10)]
    claims = take(broker, limit=4)
    assert [c.id for c in claims] == ids[:4]
    assert [c.id for c in take(broker, limit=100)] == ids[4:]


def test_queues_listed_first_are_drained_first(app: runq.App, broker: Broker) -> None:
    low = put(app, queue="low")
    high = put(app, queue="high")
    assert [c.id for c in take(broker, queues=("high", "low"), limit=2)] == [high, low]
    assert take(broker, queues=("other",)) == []


def test_enqueue_many_is_one_batch_in_order(app: runq.App, broker: Broker) -> None:
    handles = app.enqueue_many([runq.Signature("add", (i, i)) for i in range(50)])
    assert len({h.id for h in handles}) == 50
    claims = take(broker, limit=50)
    assert [c.id for c in claims] == [h.id for h in handles]
    assert json.loads(claims[7].payload)["args"] == [7, 7]


# -- delay ------------------------------------------------------------------------------


def test_delayed_task_is_scheduled_and_never_starts_early(app: runq.App, broker: Broker) -> None:
    enqueued = time.time()
    task_id = put(app, delay=0.4)
    assert status(app, task_id) is Status.SCHEDULED
    info = app.info(task_id)
    assert info is not None and info.eta is not None
    assert take(broker) == []
    claim = wait_until(lambda: take(broker), timeout=10)[0]
    assert claim.id == task_id
    assert time.time() >= enqueued + 0.4


def test_eta_and_timedelta_delay(app: runq.App, broker: Broker) -> None:
    soon = put(app, eta=datetime.now(timezone.utc) + timedelta(seconds=0.2))
    past = put(app, eta=datetime.now(timezone.utc) - timedelta(hours=1))
    later = put(app, delay=timedelta(hours=1))
    assert status(app, past) is Status.PENDING
    assert status(app, soon) is Status.SCHEDULED
    assert status(app, later) is Status.SCHEDULED
    assert take_one(broker).id == past
    assert wait_until(lambda: take(broker), timeout=10)[0].id == soon


def test_wait_for_work_ends_when_work_arrives(app: runq.App, broker: Broker) -> None:
    put(app, delay=0.3)
    started = time.monotonic()
    broker.wait_for_work(("default",), timeout=5.0)
    assert time.monotonic() - started < 4.0  # woke for the due task, not the timeout


def test_work_enqueued_between_an_empty_claim_and_the_wait_ends_the_wait(app: runq.App, broker: Broker) -> None:
    """A worker's loop: a claim finds nothing, then it waits. A task another producer enqueues
    in between (here a thread: its own connection) must end that wait, not leave it to time out."""
    assert take(broker) == []
    producer = threading.Thread(target=put, args=(app,))
    producer.start()
    producer.join()
    started = time.monotonic()
    broker.wait_for_work(("default",), timeout=20.0)
    assert time.monotonic() - started < 10.0
    assert len(take(broker)) == 1


def test_interrupt_ends_the_wait_in_progress_and_every_later_one(broker: Broker) -> None:
    """A stopping worker interrupts its claimer's idle wait rather than sitting it out (up to
    5 s on Redis, the whole timeout elsewhere: each longer than the 3 s allowed here)."""
    waiter = threading.Thread(target=broker.wait_for_work, args=(("default",), 60.0))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive(), "nothing to do: the wait should still be blocked"
    broker.interrupt()
    waiter.join(timeout=3.0)
    assert not waiter.is_alive()
    started = time.monotonic()
    broker.wait_for_work(("default",), 60.0)
    assert time.monotonic() - started < 3.0


# -- idempotency ------------------------------------------------------------------------


def test_same_key_returns_first_task_and_enqueues_nothing(app: runq.App) -> None:
    first = app.enqueue("add", args=[1, 2], key="inv-42")
    again = app.enqueue("add", args=[9, 9], key="inv-42")
    elsewhere = app.enqueue("add", args=[1, 2], key="inv-42", queue="other")
    assert again.id == first.id
    assert elsewhere.id != first.id
    assert app.stats().counters["enqueued"] == 2
    info = again.info()
    assert info is not None and info.args == [1, 2]


def test_same_key_inside_one_batch(app: runq.App) -> None:
    handles = app.enqueue_many([runq.Signature("noop").options(key="k")] * 3)
    assert len({h.id for h in handles}) == 1


def test_key_is_free_again_once_its_task_is_gone(app: runq.App, broker: Broker) -> None:
    first = put(app, key="k")
    claim = take_one(broker)
    assert succeed(broker, claim)
    assert app.purge(None) == 1
    assert put(app, key="k") != first


# -- leases, fencing and recovery ------------------------------------------------------------


def test_claim_marks_running_counts_attempt_and_fences(app: runq.App, broker: Broker) -> None:
    task_id = put(app)
    claim = take_one(broker)
    assert (claim.id, claim.attempt, claim.queue) == (task_id, 1, "default")
    info = app.info(task_id)
    assert info is not None
    assert (info.status, info.attempts, info.worker) == (Status.RUNNING, 1, WORKER)
    assert broker.renew([claim], 30) == [True]
    forged = Claim(claim.id, claim.queue, claim.payload, claim.attempt, "not-the-token")
    assert broker.renew([forged], 30) == [False]
    assert not succeed(broker, forged)
    assert succeed(broker, claim, 42)
    assert app.handle(task_id).result(timeout=1) == 42
    assert succeed(broker, claim, 43)  # a repeat reads as applied (its reply may have been lost)...
    assert app.handle(task_id).result(timeout=1) == 42  # ...and the task was settled once only


def test_expired_lease_is_redelivered_and_the_late_result_rejected(app: runq.App, broker: Broker) -> None:
    task_id = put(app)
    stalled = take_one(broker, lease=0.2)
    second = wait_until(lambda: take(broker), timeout=10)[0]
    assert second.id == task_id and second.attempt == 2 and second.token != stalled.token
    assert not succeed(broker, stalled, "late")  # the paused worker cannot settle any more
    assert broker.renew([stalled], 30) == [False]
    assert succeed(broker, second, "fresh")
    assert app.handle(task_id).result(timeout=1) == "fresh"


def test_lost_worker_error_is_recorded_and_counted(app: runq.App, broker: Broker) -> None:
    task_id = put(app)
    take_one(broker, lease=0.1)
    wait_until(lambda: take(broker), timeout=10)
    info = app.info(task_id)
    assert info is not None and info.attempts == 2
    assert info.error is not None and info.error["type"] == "WorkerLost"


def test_lost_runs_keep_counting_attempts(app: runq.App, broker: Broker) -> None:
    """Redelivery counts, so the worker can fail a poison pill (see test_worker)."""
    task_id = put(app, retries=0)
    take_one(broker, lease=0.1)
    second = wait_until(lambda: take(broker, lease=0.1), timeout=10)[0]
    third = wait_until(lambda: take(broker), timeout=10)[0]
    assert (second.attempt, third.attempt) == (2, 3)
    info = app.info(task_id)
    assert info is not None and (info.status, info.attempts) == (Status.RUNNING, 3)


# -- outcomes ---------------------------------------------------------------------------


def test_retry_outcome_schedules_after_delay(app: runq.App, broker: Broker) -> None:
    task_id = put(app)
    claim = take_one(broker)
    error = {"type": "RuntimeError", "message": "boom", "traceback": None}
    assert broker.settle([Outcome(claim.id, claim.token, "retry", error=error, delay=0.3)]) == [True]
    assert status(app, task_id) is Status.SCHEDULED
    assert take(broker) == []
    again = wait_until(lambda: take(broker), timeout=10)[0]
    assert (again.id, again.attempt) == (task_id, 2)
    assert app.stats().counters["retried"] == 1


def test_failed_goes_to_dead_letter_and_retry_resets_it(app: runq.App, broker: Broker) -> None:
    task_id = put(app)
    claim = take_one(broker)
    error = {"type": "ValueError", "message": "bad", "traceback": "Traceback..."}
    assert broker.settle([Outcome(claim.id, claim.token, "failed", error=error)]) == [True]
    with pytest.raises(runq.TaskFailed) as failure:
        app.handle(task_id).result(timeout=1)
    assert (failure.value.type, failure.value.message, failure.value.traceback) == ("ValueError", "bad", "Traceback...")
    assert [t.id for t in app.list("failed")] == [task_id]
    assert app.retry(task_id)
    info = app.info(task_id)
    assert info is not None and (info.status, info.attempts) == (Status.PENDING, 0)
    assert take_one(broker).attempt == 1
    assert not app.retry(task_id)  # running, not failed


def test_settle_many_in_one_call(app: runq.App, broker: Broker) -> None:
    ids = [put(app) for _ in range(4)]
    claims = take(broker, limit=4)
    outcomes = [
        Outcome(claims[0].id, claims[0].token, "succeeded", result="1", result_ttl=60),
        Outcome(claims[1].id, claims[1].token, "retry", error={"type": "E", "message": ""}, delay=60),
        Outcome(claims[2].id, claims[2].token, "failed", error={"type": "E", "message": ""}),
        Outcome(claims[3].id, "stale", "succeeded", result="1", result_ttl=60),
    ]
    assert broker.settle(outcomes) == [True, True, True, False]
    assert [status(app, i) for i in ids] == [Status.SUCCEEDED, Status.SCHEDULED, Status.FAILED, Status.RUNNING]
    counters = app.stats().counters
    assert (counters["succeeded"], counters["retried"], counters["failed"]) == (1, 1, 1)


def test_a_repeated_settle_reads_as_applied_and_changes_nothing(app: runq.App, broker: Broker) -> None:
    """A settle sent again because its reply was lost (Redis paused past the socket timeout, a
    PostgreSQL connection broken after the commit) was applied once: it is no "late outcome"."""
    ids = [put(app) for _ in range(3)]
    claims = take(broker, limit=3)
    outcomes = [
        Outcome(claims[0].id, claims[0].token, "succeeded", result="1", result_ttl=60),
        Outcome(claims[1].id, claims[1].token, "retry", error={"type": "E", "message": ""}, delay=60),
        Outcome(claims[2].id, claims[2].token, "failed", error={"type": "E", "message": ""}),
    ]
    assert broker.settle(outcomes) == [True, True, True]
    again = [dataclasses.replace(outcomes[0], result="2"), *outcomes[1:]]
    assert broker.settle(again) == [True, True, True]  # repeats: applied once, before
    assert broker.settle([dataclasses.replace(outcomes[0], token="someone-else")]) == [False]  # fencing still holds
    assert [status(app, i) for i in ids] == [Status.SUCCEEDED, Status.SCHEDULED, Status.FAILED]
    assert app.handle(ids[0]).result(timeout=1) == 1
    counters = app.stats().counters
    assert (counters["succeeded"], counters["retried"], counters["failed"]) == (1, 1, 1)


def test_release_returns_task_in_place_and_uncounts(app: runq.App, broker: Broker) -> None:
    first, second = put(app), put(app)
    claim = take_one(broker)
    assert broker.settle([Outcome(claim.id, claim.token, "release", uncount=True)]) == [True]
    info = app.info(first)
    assert info is not None and (info.status, info.attempts) == (Status.PENDING, 0)
    assert [c.id for c in take(broker, limit=2)] == [first, second]


def test_dead_letters_are_never_expired(app: runq.App, broker: Broker) -> None:
    task_id = put(app, result_ttl=0.1)
    claim = take_one(broker)
    broker.settle([Outcome(claim.id, claim.token, "failed", error={"type": "E", "message": ""}, result_ttl=0.1)])
    put(app)
    wait_until(lambda: take(broker), timeout=5)  # a claim runs the broker's clean-up
    time.sleep(0.2)  # let the would-be expiry pass; the assertion is that nothing happens
    take(broker)
    assert status(app, task_id) is Status.FAILED


def test_results_expire_after_result_ttl(app: runq.App, broker: Broker) -> None:
    task_id = put(app, result_ttl=0.3)
    assert succeed(broker, take_one(broker), "v", ttl=0.3)
    assert status(app, task_id) is Status.SUCCEEDED
    wait_until(lambda: app.info(task_id) is None, timeout=10)
    with pytest.raises(runq.TaskNotFound):
        app.handle(task_id).result(timeout=0)


# -- cancel -----------------------------------------------------------------------------


def test_cancel_pending_and_scheduled_never_run(app: runq.App, broker: Broker) -> None:
    pending, scheduled = put(app), put(app, delay=0.1)
    assert app.cancel(pending) and app.cancel(scheduled)
    time.sleep(0.15)  # past the scheduled task's eta: it must still not run
    assert take(broker, limit=10) == []
    with pytest.raises(runq.TaskCancelled):
        app.handle(pending).result(timeout=1)
    assert not app.cancel(pending)
    assert app.stats().counters["cancelled"] == 2


def test_cancel_running_revokes_the_claim(app: runq.App, broker: Broker) -> None:
    task_id = put(app)
    claim = take_one(broker)
    assert app.cancel(task_id)
    assert status(app, task_id) is Status.CANCELLED
    assert broker.renew([claim], 30) == [False]
    assert not succeed(broker, claim, "too late")
    assert status(app, task_id) is Status.CANCELLED


def test_cancel_unknown_or_finished_is_false(app: runq.App, broker: Broker) -> None:
    assert not app.cancel(new_task_id("default"))
    put(app)
    assert succeed(broker, take_one(broker))
    [done] = app.list("succeeded")
    assert not app.cancel(done.id)


def test_cancelled_task_can_be_retried(app: runq.App, broker: Broker) -> None:
    task_id = put(app)
    app.cancel(task_id)
    assert app.retry(task_id)
    assert take_one(broker).id == task_id


# -- results and waiting ----------------------------------------------------------------------


def test_result_times_out_while_pending(app: runq.App) -> None:
    handle = app.enqueue("noop")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.2)
    assert time.monotonic() - started >= 0.2


def test_wait_returns_when_task_finishes(app: runq.App, broker: Broker) -> None:
    import threading

    handle = app.enqueue("noop")
    claim = take_one(broker)
    timer = threading.Timer(0.2, succeed, args=(broker, claim, {"ok": True}))
    timer.start()
    try:
        assert handle.result(timeout=10) == {"ok": True}
    finally:
        timer.join()


def test_aresult(app: runq.App, broker: Broker) -> None:
    import asyncio

    handle = app.enqueue("noop")
    succeed(broker, take_one(broker), [1, 2])
    assert asyncio.run(handle.aresult(timeout=5)) == [1, 2]


def test_unknown_id(app: runq.App) -> None:
    unknown = new_task_id("default")
    assert app.info(unknown) is None
    with pytest.raises(runq.TaskNotFound):
        app.handle(unknown).status()
    with pytest.raises(ValueError):
        app.handle("not-an-id")


# -- listing, purging, stats, workers -----------------------------------------------------


def test_list_and_purge(app: runq.App, broker: Broker) -> None:
    ids = [put(app, queue=q) for q in ("a", "a", "b")]
    for claim in take(broker, queues=("a", "b"), limit=3):
        broker.settle([Outcome(claim.id, claim.token, "failed", error={"type": "E", "message": ""})])
    put(app, queue="a")
    assert [t.id for t in app.list("failed")] == ids[::-1]
    assert [t.id for t in app.list("failed", queue="a", limit=1)] == [ids[1]]
    assert len(app.list()) == 4
    assert app.purge("failed", queue="b") == 1
    assert app.purge() == 2
    assert app.list("failed") == []
    assert len(app.list("pending")) == 1
    with pytest.raises(ValueError):
        app.purge("running")
    with pytest.raises(ValueError):
        app.list("nonsense")


def test_stats_counts_every_state(app: runq.App, broker: Broker) -> None:
    put(app), put(app, delay=60), put(app), put(app), put(app)
    running, to_succeed, to_fail = take(broker, limit=3)
    succeed(broker, to_succeed)
    broker.settle([Outcome(to_fail.id, to_fail.token, "failed", error={"type": "E", "message": ""})])
    app.cancel(put(app))
    stats = app.stats()
    q = stats.queues["default"]
    assert (q.pending, q.scheduled, q.running, q.succeeded, q.failed, q.cancelled) == (1, 1, 1, 1, 1, 1)
    assert stats.counters == {"enqueued": 6, "succeeded": 1, "failed": 1, "retried": 0, "cancelled": 1}
    assert stats.run.p50 is not None and stats.wait.p99 is not None
    assert stats.throughput > 0
    assert running.id


def test_worker_heartbeats(broker: Broker) -> None:
    info = WorkerInfo("w1", "host", 123, ("default",), "thread", 4, ("t1",), {"succeeded": 3}, 1.0, 2.0)
    broker.heartbeat(info, ttl=30)
    broker.heartbeat(WorkerInfo("w2", "host", 124, ("a", "b"), "process", 2), ttl=0.2)
    assert {w.id for w in broker.workers()} == {"w1", "w2"}
    assert broker.workers()[0] == info
    wait_until(lambda: [w.id for w in broker.workers()] == ["w1"], timeout=10)
    broker.unregister("w1")
    assert broker.workers() == []


# -- bad input (SPEC §4) ------------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"priority": 101}, ValueError),
        ({"priority": -101}, ValueError),
        ({"priority": "high"}, TypeError),
        ({"delay": -1}, ValueError),
        ({"eta": datetime(2030, 1, 1)}, ValueError),  # naive
        ({"delay": 1, "eta": datetime.now(timezone.utc)}, ValueError),
        ({"retries": -1}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"queue": "no spaces"}, ValueError),
        ({"rate_limit": "fast"}, ValueError),
        ({"colour": "red"}, TypeError),
    ],
)
def test_bad_options_are_rejected_and_nothing_is_enqueued(
    app: runq.App, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        app.enqueue("noop", **options)
    assert app.stats().counters["enqueued"] == 0


def test_non_json_arguments_name_the_type(app: runq.App) -> None:
    with pytest.raises(TypeError, match="Opaque"):
        app.enqueue("echo", args=[Opaque()])
    with pytest.raises(TypeError, match="set"):
        app.enqueue("echo", kwargs={"x": {1, 2}})
    with pytest.raises(TypeError):
        app.enqueue("echo", kwargs={1: "non-string key"})  # type: ignore[dict-item]
    assert app.list() == []


def test_payload_over_max_payload(broker_url: str) -> None:
    small = runq.App(settings=runq.Settings(url=broker_url, max_payload=1000))
    try:
        with pytest.raises(ValueError, match="max_payload"):
            small.enqueue("echo", args=["x" * 2000])
        small.enqueue("echo", args=["x" * 500])
    finally:
        small.close()


def test_enqueue_many_is_all_or_nothing(app: runq.App) -> None:
    batch = [runq.Signature("echo", (1,)), runq.Signature("echo", (Opaque(),))]
    with pytest.raises(TypeError):
        app.enqueue_many(batch)
    assert app.list() == []
    with pytest.raises(TypeError):
        app.enqueue_many(["not a signature"])  # type: ignore[list-item]


def test_decorator_options_are_validated(app: runq.App) -> None:
    with pytest.raises(ValueError):
        app.task(priority=500)(lambda: None)
    with pytest.raises(TypeError):
        app.task(retry_for=("IOError",))(lambda: None)  # type: ignore[arg-type]


def test_task_defaults_and_call_options(app: runq.App, broker: Broker) -> None:
    @app.task(name="defaults", queue="q1", priority=3, retries=7)
    def defaults(x: int) -> int:
        return x

    assert defaults(5) == 5  # calling it runs it here
    handle = defaults.options(priority=9).delay(1)
    info = handle.info()
    assert info is not None and (info.queue, info.priority) == ("q1", 9)
    claim = take_one(broker, queues=("q1",))
    message = Message.decode(claim.payload, claim.id, claim.queue)
    assert (message.retries, message.args) == (7, [1])
    sig = defaults.s(2).options(queue="q2")
    [h] = app.enqueue_many([sig])
    assert queue_of(h.id) == "q2"


def test_runtime_dates_the_start_of_a_prefetched_run(app: runq.App, broker: Broker) -> None:
    """A worker claims ahead; the task starts later than its claim. The broker dates the
    start from the run time the worker measured, so run-time percentiles stay true."""
    task_id = put(app)
    claim = take_one(broker)
    outcome = Outcome(claim.id, claim.token, "succeeded", result="1", result_ttl=60, runtime=0.25)
    assert broker.settle([outcome]) == [True]
    info = app.info(task_id)
    assert info is not None and info.started_at is not None and info.finished_at is not None
    assert abs((info.finished_at - info.started_at).total_seconds() - 0.25) < 0.01
    assert abs(app.stats().run.p50 - 0.25) < 0.01  # type: ignore[operator]
