"""Each divergence tests/test_model.py found between memory:// (the reference model) and a real
broker, as a small deterministic program, run on every broker: the state machine finds these by
chance, these keep them fixed on every run.

Time moves with the brokers' own clocks (tests/support/clock.py), never by sleeping.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from runq.brokers import Broker
from runq.brokers.sqlite import SQLiteBroker
from runq.models import BreakerRule, Message, Outcome, Status, new_task_id
from tests.conftest import CONFORMANCE
from tests.support.clock import Clock, clocked

BROKER_KINDS = CONFORMANCE
U = 1000.0


@pytest.fixture
def moved(broker_url: str) -> Iterator[tuple[Broker, Clock]]:
    broker, clock = clocked(broker_url)
    yield broker, clock
    clock.close()


def put(broker: Broker, queue: str = "a", **options: object) -> str:
    [task_id] = broker.enqueue([Message(new_task_id(queue), "t", queue, **options)], U)  # type: ignore[arg-type]
    return task_id


def test_renew_never_shortens_a_lease(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: renew(lease=1U) of a claim leased for 4U made memory:// and Redis
    write now + 1U, SQLite and PostgreSQL left it (more than half left): after 2U the task was
    taken back on two brokers only. Every broker now writes a lease only with less than half left."""
    broker, clock = moved
    put(broker)
    [claim] = broker.claim(["a"], "w", 1, 4 * U)
    assert broker.renew([claim], U) == [True]
    clock.advance(2 * U)
    assert broker.claim(["a"], "w", 1, U) == []  # still held: its 4U lease stands
    clock.advance(U)
    assert broker.renew([claim], 8 * U) == [True]  # 1U left of 8U: now + 8U
    clock.advance(4 * U)
    assert broker.claim(["a"], "w", 1, U) == []
    assert broker.renew([claim], 2 * U) == [True]  # 4U left: more than half of 2U, never shortened
    clock.advance(3 * U)
    assert broker.claim(["a"], "w", 1, U) == []
    clock.advance(2 * U)
    [again] = broker.claim(["a"], "w", 1, U)
    assert (again.id, again.attempt) == (claim.id, 2)


def test_stats_count_no_task_past_its_result_ttl(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: a task cancelled with a 2U result_ttl, 2U later, was gone from list and
    get everywhere but still counted by SQLite's and PostgreSQL's stats (until their clean-up ran)."""
    broker, clock = moved
    gone = put(broker, result_ttl=2 * U)
    kept = put(broker)
    assert broker.cancel(gone)
    clock.advance(2 * U)
    assert broker.get(gone) is None
    counts = broker.stats().queues["a"]
    assert (counts.pending, counts.cancelled) == (1, 0), counts
    assert [t.id for t in broker.list(None, None, 10)] == [kept]


# -- list: newest first (enqueue order) in every state -------------------------------------
# Redis listed each state from its own zset, by its own score: pending by priority then ready
# order, scheduled by eta, running by lease end (runq/brokers/redis/lua/list.lua now).


def newest(broker: Broker, status: Status | None, limit: int = 1) -> list[str]:
    return [t.id for t in broker.list(status, None, limit)]


def test_list_pending_is_newest_first_whatever_the_priority(moved: tuple[Broker, Clock]) -> None:
    broker, _ = moved
    for _ in range(3):
        put(broker)
    urgent = put(broker, priority=1)
    assert newest(broker, Status.PENDING) == [urgent]
    assert newest(broker, None) == [urgent]


def test_list_pending_is_newest_first_not_latest_ready(moved: tuple[Broker, Clock]) -> None:
    """A task retried (ready again, behind the others) is not the newest: it was enqueued first."""
    broker, _ = moved
    first, second, third = put(broker), put(broker), put(broker)
    [claim] = broker.claim(["a"], "w", 1, U)
    assert claim.id == first
    assert broker.settle([Outcome(claim.id, claim.token, "retry")]) == [True]
    assert newest(broker, Status.PENDING) == [third]
    assert newest(broker, Status.PENDING, 3) == [third, second, first]


def test_list_scheduled_is_newest_first_not_latest_eta(moved: tuple[Broker, Clock]) -> None:
    broker, _ = moved
    later = put(broker, delay=3 * U)
    sooner = put(broker, delay=U)
    assert newest(broker, Status.SCHEDULED) == [sooner]
    assert newest(broker, Status.SCHEDULED, 2) == [sooner, later]


def test_list_running_is_newest_first_not_longest_lease(moved: tuple[Broker, Clock]) -> None:
    broker, _ = moved
    first, second = put(broker), put(broker)
    assert [c.id for c in broker.claim(["a"], "w", 1, 4 * U)] == [first]
    assert [c.id for c in broker.claim(["a"], "w", 1, U)] == [second]
    assert newest(broker, Status.RUNNING) == [second]
    assert newest(broker, None) == [second]


def test_list_leaves_out_results_past_their_ttl_before_the_limit(moved: tuple[Broker, Clock]) -> None:
    """The newest tasks are gone (past their result_ttl): the limit is filled with older ones."""
    broker, clock = moved
    kept = put(broker)
    gone = [put(broker, result_ttl=U) for _ in range(3)]
    for task_id in gone:
        assert broker.cancel(task_id)
    clock.advance(2 * U)
    assert newest(broker, None, 2) == [kept]
    assert newest(broker, Status.CANCELLED, 2) == []


# -- a task past its result_ttl is gone, whether its broker deleted it yet or not ----------------
# Each broker deletes such tasks on its own schedule (memory:// and Redis in the next claim,
# SQLite once a second of its clock, PostgreSQL once a real second): no answer may depend on it.


def finished(broker: Broker, kind: str = "succeeded") -> tuple[str, Outcome]:
    """A task settled ``kind`` whose result is kept 1U, and the outcome that settled it."""
    task_id = put(broker, result_ttl=U)
    [claim] = broker.claim(["a"], "w", 1, U)
    done = Outcome(claim.id, claim.token, kind, result="1", result_ttl=U)  # type: ignore[arg-type]
    assert broker.settle([done]) == [True]
    return task_id, done


def test_a_settle_sent_again_after_the_result_expired_is_stale(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: memory:// (which had deleted it) answered False, PostgreSQL True."""
    broker, clock = moved
    _, done = finished(broker)
    assert broker.settle([done]) == [True]  # a repeat, while the task is there
    clock.advance(2 * U)
    assert broker.settle([done]) == [False]


def test_purge_does_not_count_results_past_their_ttl(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: PostgreSQL (not yet cleaned up) counted the expired result."""
    broker, clock = moved
    finished(broker)
    clock.advance(2 * U)
    assert broker.purge(None, None) == 0
    assert broker.purge(Status.SUCCEEDED, None) == 0


def test_retry_refuses_a_task_past_its_result_ttl(moved: tuple[Broker, Clock]) -> None:
    """Redis refused it (gone), memory://, SQLite and PostgreSQL brought it back."""
    broker, clock = moved
    task_id = put(broker, result_ttl=U)
    assert broker.cancel(task_id)
    clock.advance(2 * U)
    assert broker.retry(task_id) is False
    assert broker.get(task_id) is None


def test_a_settle_sent_again_after_a_cancel_is_stale(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: a retry applied, the task cancelled, the settle sent again: Redis
    still read it as applied (it kept the claim's token), every other broker as stale."""
    broker, _ = moved
    task_id = put(broker)
    [claim] = broker.claim(["a"], "w", 1, U)
    retry = Outcome(claim.id, claim.token, "retry")
    assert broker.settle([retry]) == [True]
    assert broker.settle([retry]) == [True]  # a repeat, while the task carries the claim's token
    assert broker.cancel(task_id)
    assert broker.settle([retry]) == [False]


def test_a_settle_sent_again_after_a_new_claim_is_stale(moved: tuple[Broker, Clock]) -> None:
    broker, _ = moved
    put(broker)
    [first] = broker.claim(["a"], "w", 1, U)
    retry = Outcome(first.id, first.token, "retry")
    assert broker.settle([retry]) == [True]
    [second] = broker.claim(["a"], "w", 1, U)
    assert second.attempt == 2
    assert broker.settle([retry]) == [False]
    assert broker.settle([Outcome(second.id, second.token, "succeeded", result="1")]) == [True]


# -- one enqueue call: a later message debounces an earlier one -------------------------------


def test_a_debounce_replaces_a_ready_task_of_its_own_batch(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: Redis wrote the batch's ready tasks only at its end, so the debounce
    found no task holding the key and enqueued a second one."""
    broker, _ = moved
    first = Message(new_task_id("a"), "t", "a", args=[1], key="k")
    second = Message(new_task_id("a"), "t", "a", args=[2], key="k", delay=U, debounce=U)
    assert broker.enqueue([first, second], U) == [first.id, first.id]
    [task] = broker.list(None, None, 10)
    assert (task.id, task.status, task.args) == (first.id, Status.SCHEDULED, [2])


def test_a_debounce_replaces_the_payload_of_its_own_batch(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: the debounced task's new payload was written, then overwritten by the
    batch's deferred write of its first payload."""
    broker, _ = moved
    first = Message(new_task_id("a"), "t", "a", args=[1], key="k", delay=U, debounce=U)
    second = Message(new_task_id("a"), "t", "a", args=[2], key="k", delay=U, debounce=U)
    assert broker.enqueue([first, second], U) == [first.id, first.id]
    [task] = broker.list(None, None, 10)
    assert (task.id, task.args) == (first.id, [2])


def test_a_late_outcome_sent_again_drives_its_breaker_once(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: a late outcome (its task cancelled meanwhile) counts, since its run
    did happen; sent again it counted again on memory://, SQLite and PostgreSQL, and opened the
    breaker, but once on Redis (whose breaker hears it by the claim's token)."""
    broker, _ = moved
    task_id = put(broker)
    [claim] = broker.claim(["a"], "w", 1, U)
    assert broker.cancel(task_id)
    late = Outcome(claim.id, claim.token, "retry", breaker=BreakerRule("t", 2, U))
    assert broker.settle([late]) == [False]
    assert broker.settle([late]) == [False]
    state = broker.stats().breakers["t"]
    assert (state["state"], state["failures"]) == ("closed", 1)


def test_an_older_sqlite_database_gets_the_breakers_seen_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with sqlite3.connect(tmp_path / "old.db") as db:  # runq_breakers as runq made it before
        db.execute(
            "CREATE TABLE runq_breakers (name TEXT PRIMARY KEY, state TEXT NOT NULL, failures INTEGER NOT NULL,"
            " open_until REAL NOT NULL, probe_until REAL NOT NULL) WITHOUT ROWID"
        )
        db.execute("INSERT INTO runq_breakers VALUES ('t', 'closed', 1, 0, 0)")
    broker = SQLiteBroker(url)
    try:
        assert broker.breaker("t", "failure", 2, U) == 0.0
        assert broker.stats().breakers["t"]["state"] == "open"
    finally:
        broker.close()


# -- claim order: a scheduled task is ready from its eta on ------------------------------------
# Redis made a due task pending only at the next claim, behind every task made ready since its
# eta; every other broker orders ready tasks by the time they became ready (lua/lib.lua: reserve_due).


def test_a_due_task_runs_before_one_enqueued_after_its_eta(moved: tuple[Broker, Clock]) -> None:
    broker, clock = moved
    due = put(broker, delay=U)
    clock.advance(2 * U)
    later = put(broker)
    assert broker.get(due).status is Status.SCHEDULED  # until a claim takes it up
    assert [c.id for c in broker.claim(["a"], "w", 1, U)] == [due]
    assert [c.id for c in broker.claim(["a"], "w", 1, U)] == [later]


def test_a_due_task_runs_before_one_taken_back_after_its_eta(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: a lease that ran out and a debounced task due, both before a claim."""
    broker, clock = moved
    lost = put(broker)
    assert [c.id for c in broker.claim(["a"], "w", 1, U)] == [lost]
    due = put(broker, delay=U)
    clock.advance(2 * U)
    assert [(c.id, c.attempt) for c in broker.claim(["a"], "w", 2, U)] == [(due, 1), (lost, 2)]


def test_a_due_task_runs_before_one_retried_after_its_eta(moved: tuple[Broker, Clock]) -> None:
    broker, clock = moved
    retried = put(broker)
    [claim] = broker.claim(["a"], "w", 1, 4 * U)
    due = put(broker, delay=U)
    clock.advance(2 * U)
    assert broker.settle([Outcome(claim.id, claim.token, "retry")]) == [True]
    assert [c.id for c in broker.claim(["a"], "w", 2, U)] == [due, retried]


def test_due_tasks_keep_their_eta_order(moved: tuple[Broker, Clock]) -> None:
    broker, clock = moved
    second = put(broker, delay=3 * U)
    first = put(broker, delay=U)
    clock.advance(2 * U)
    ready = put(broker)
    clock.advance(2 * U)
    assert [c.id for c in broker.claim(["a"], "w", 3, U)] == [first, ready, second]


def test_a_task_after_one_its_own_batch_cancelled_is_cancelled(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: in one enqueue call, a task waits on a cancelled task and a third on
    it; Redis took a parent of the same call to be waiting, so the third waited forever."""
    broker, _ = moved
    gone = put(broker)
    assert broker.cancel(gone)
    middle = Message(new_task_id("a"), "t", "a", after=(gone,))
    last = Message(new_task_id("a"), "t", "a", after=(middle.id,))
    assert broker.enqueue([middle, last], U) == [middle.id, last.id]
    infos = [broker.get(task_id) for task_id in (middle.id, last.id)]
    assert [info.status if info else None for info in infos] == [Status.CANCELLED, Status.CANCELLED]


def error_of(broker: Broker, task_id: str) -> str:
    info = broker.get(task_id)
    assert info is not None and info.error is not None, info
    return str(info.error["message"])


def test_a_task_after_a_cancelled_dependent_names_the_cause(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: the task a waits on was cancelled (its own parent was) either before a
    was enqueued or after; a's error named the cause only in the second case, so Redis (which links
    a parent in another queue after the enqueue) and memory:// disagreed. The error is now the one
    the cascade gives, whenever the task comes."""
    broker, _ = moved
    gone = put(broker)
    assert broker.cancel(gone)
    middle = Message(new_task_id("b"), "t", "b", after=(gone,))
    last = Message(new_task_id("a"), "t", "a", after=(middle.id,))
    broker.enqueue([middle, last], U)
    assert error_of(broker, middle.id) == f"parent task {gone} was cancelled"
    assert error_of(broker, last.id) == f"parent task {middle.id} was cancelled (parent task {gone} was cancelled)"


def test_a_task_after_an_expired_one_says_it_expired(moved: tuple[Broker, Clock]) -> None:
    broker, clock = moved
    waiting = Message(new_task_id("a"), "t", "a")
    parent = put(broker, expires=U)
    before = put(broker, after=(parent,))
    clock.advance(2 * U)
    assert broker.claim(["a"], "w", 1, U) == []  # the parent expires, its dependent with it
    [after] = broker.enqueue([dataclasses.replace(waiting, after=(parent,))], U)
    assert error_of(broker, before) == error_of(broker, after) == f"parent task {parent} expired"


def test_tasks_taken_back_together_go_in_enqueue_order(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: leases that ran out are taken back by one claim, all ready at that
    moment: every broker queues them in enqueue order, Redis did in the order the leases ended."""
    broker, clock = moved
    first, second = put(broker), put(broker)
    assert [c.id for c in broker.claim(["a"], "w", 1, 4 * U)] == [first]
    assert [c.id for c in broker.claim(["a"], "w", 1, U)] == [second]
    clock.advance(5 * U)
    assert [(c.id, c.attempt) for c in broker.claim(["a"], "w", 2, U)] == [(first, 2), (second, 2)]


def test_of_parents_already_ended_badly_the_error_names_one_of_its_own_queue_first(
    moved: tuple[Broker, Clock],
) -> None:
    """Found by test_model: Redis decides a task's parents of its own queue at enqueue and the
    others after, so it named the parent of its own queue where the others named the first in
    ``after``; every broker now checks them in that order (rules.parents_in_order)."""
    broker, _ = moved
    elsewhere, here = put(broker, "b"), put(broker, "a")
    assert broker.cancel(elsewhere) and broker.cancel(here)
    task_id = put(broker, "a", after=(elsewhere, here))
    assert error_of(broker, task_id) == f"parent task {here} was cancelled"


def test_a_cancel_cascades_in_its_own_queue_before_others(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: P (queue b) has dependents A (queue a) and B (queue b), and B waits on
    A too. Cancelling P cancelled A first on memory:// (id order), so B named A; Redis cancels B at
    once (same queue) and A in a second call, so B named P. Every broker now cascades in the
    parent's queue first, into other queues after (rules.cascade_later)."""
    broker, _ = moved
    first, parent = put(broker, "a"), put(broker, "b")
    a = Message(new_task_id("a"), "t", "a", after=(first, parent))
    b = Message(new_task_id("b"), "t", "b", after=(parent, a.id))
    assert broker.enqueue([a, b], U) == [a.id, b.id]
    assert broker.cancel(parent)
    assert error_of(broker, a.id) == error_of(broker, b.id) == f"parent task {parent} was cancelled"
    assert broker.stats().counters["cancelled"] == 3


def test_a_claim_keeps_every_queue_it_is_given(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: a claim that got its limit from its first queue left the next ones
    alone on Redis (one call per queue, until the limit), where every other broker made their due
    tasks pending and took back their lost leases."""
    broker, clock = moved
    put(broker, "a")
    due = put(broker, "b", delay=U)
    clock.advance(2 * U)
    assert len(broker.claim(["a", "b"], "w", 1, U)) == 1
    info = broker.get(due)
    assert info is not None and info.status is Status.PENDING


def test_tasks_retried_in_one_settle_go_in_enqueue_order(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: two retries in one settle, both ready at that moment: every broker
    queues them in enqueue order, Redis did in the settle's order (lua/lib.lua: order_ready)."""
    broker, _ = moved
    first, second = put(broker), put(broker)
    claims = broker.claim(["a"], "w", 2, U)
    assert [c.id for c in claims] == [first, second]
    retries = [Outcome(c.id, c.token, "retry") for c in reversed(claims)]
    assert broker.settle(retries) == [True, True]
    assert [c.id for c in broker.claim(["a"], "w", 2, U)] == [first, second]


def test_a_task_released_by_its_own_enqueue_keeps_its_place(moved: tuple[Broker, Clock]) -> None:
    """A task whose parents all succeeded already is ready at once, in the batch's order."""
    broker, _ = moved
    parent = put(broker)
    [claim] = broker.claim(["a"], "w", 1, U)
    assert broker.settle([Outcome(claim.id, claim.token, "succeeded", result="1")]) == [True]
    child = Message(new_task_id("a"), "t", "a", after=(parent,))
    plain = Message(new_task_id("a"), "t", "a")
    broker.enqueue([child, plain], U)
    assert [c.id for c in broker.claim(["a"], "w", 2, U)] == [child.id, plain.id]


def test_tasks_ready_in_one_settle_go_in_enqueue_order(moved: tuple[Broker, Clock]) -> None:
    """A retry and a dependent released by the same settle are ready at the same moment."""
    broker, _ = moved
    parent = put(broker)
    child = put(broker, after=(parent,))
    retried = put(broker)
    claims = broker.claim(["a"], "w", 2, U)
    assert [c.id for c in claims] == [parent, retried]
    done = Outcome(claims[0].id, claims[0].token, "succeeded", result="1")
    assert broker.settle([Outcome(claims[1].id, claims[1].token, "retry"), done]) == [True, True]
    assert [c.id for c in broker.claim(["a"], "w", 2, U)] == [child, retried]


def test_a_task_held_by_its_slot_shows_no_worker(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: PostgreSQL claims, then gives back the tasks over their slot's limit,
    and left the claiming worker on them though none ran them."""
    broker, _ = moved
    running = put(broker, slot="s", concurrency=1)
    held = put(broker, slot="s", concurrency=1)
    assert [c.id for c in broker.claim(["a"], "w", 2, U)] == [running]
    info = broker.get(held)
    assert info is not None and (info.status, info.worker, info.attempts) == (Status.SCHEDULED, None, 0)


def test_a_task_held_by_its_slot_is_as_it_was(moved: tuple[Broker, Clock]) -> None:
    """Found by test_model: a task retried, then held back by a claim for its slot's limit, kept
    its last run's claim (a settle sent again still read as applied) and start everywhere but on
    PostgreSQL, which claims then gives back, and had cleared them."""
    broker, _ = moved
    task_id = put(broker, slot="s", concurrency=1)
    [first] = broker.claim(["a"], "w", 1, U)
    retry = Outcome(first.id, first.token, "retry")
    assert broker.settle([retry]) == [True]
    other = put(broker, slot="s", concurrency=1, priority=1)
    assert [c.id for c in broker.claim(["a"], "w", 1, U)] == [other]
    assert broker.claim(["a"], "x", 1, U) == []  # holds task_id: its slot has its run
    info = broker.get(task_id)
    assert info is not None and (info.status, info.worker, info.attempts) == (Status.SCHEDULED, "w", 1)
    assert info.started_at is not None
    assert broker.settle([retry]) == [True]
