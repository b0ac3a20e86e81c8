"""memory:// against SQLite, driven by Hypothesis: the same random sequence of enqueues (with
priorities, delays, keys, parents, concurrency slots, expiries, debounced keys), claims,
settles of every kind (each driving a breaker), renewals, cancels, retries, purges and queue
pauses must give the same answers and leave the same tasks in the same states.

The conformance suites check each rule on its own; this checks that the rules compose the
same way in both, on sequences nobody wrote by hand.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule

from runq.brokers.memory import MemoryBroker
from runq.brokers.sqlite import SQLiteBroker
from runq.models import BreakerRule, Claim, Message, Outcome, Status, new_task_id

QUEUES = ("a", "b")
SLOTS = {"s1": 1, "s2": 2}  # concurrency slot -> its limit
BREAKER = BreakerRule("t", 2, 3600.0)
ERROR = {"type": "RuntimeError", "message": "boom", "traceback": None}


class SameAsSQLite(RuleBasedStateMachine):
    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="runq-model-"))
        self.memory = MemoryBroker()
        self.sqlite = SQLiteBroker(f"sqlite:///{self.directory / 'runq.db'}")
        self.brokers = (self.memory, self.sqlite)
        self.held: dict[str, tuple[Claim, Claim]] = {}  # task id -> (memory's claim, SQLite's)
        self.spent: list[tuple[Claim, Claim]] = []  # claims already settled or taken over

    def teardown(self) -> None:
        self.sqlite.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def both(self, call: str, *args: Any) -> Any:
        mine, theirs = getattr(self.memory, call)(*args), getattr(self.sqlite, call)(*args)
        assert mine == theirs, (call, args, mine, theirs)
        return mine

    @initialize(target=tasks, queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=4))
    def some_tasks(self, queues: list[str]) -> Any:
        messages = [Message(new_task_id(queue), "t", queue) for queue in queues]
        return multiple(*self.both("enqueue", messages, 3600.0))

    @rule(
        target=tasks,
        queue=st.sampled_from(QUEUES),
        priority=st.integers(-1, 1),
        delayed=st.booleans(),
        key=st.none() | st.sampled_from(["k1", "k2"]),
    )
    def enqueue(self, queue: str, priority: int, delayed: bool, key: str | None) -> str:
        message = Message(new_task_id(queue), "t", queue, priority=priority, delay=3600.0 if delayed else 0.0, key=key)
        [task_id] = self.both("enqueue", [message], 3600.0)
        return str(task_id)

    @rule(
        target=tasks,
        queue=st.sampled_from(QUEUES),
        priority=st.integers(-1, 1),
        slot=st.none() | st.sampled_from(sorted(SLOTS)),
        expires=st.none() | st.sampled_from([0.0, 3600.0]),
        debounce=st.none() | st.sampled_from(["k1", "k2"]),
    )
    def enqueue_flow(
        self, queue: str, priority: int, slot: str | None, expires: float | None, debounce: str | None
    ) -> str:
        """SPEC §9: a concurrency slot (limit fixed per slot), an expiry, a debounced key."""
        message = Message(
            new_task_id(queue),
            "t",
            queue,
            priority=priority,
            delay=3600.0 if debounce else 0.0,
            key=debounce,
            expires=expires,
            debounce=3600.0 if debounce else None,
            slot=slot,
            concurrency=SLOTS[slot] if slot else None,
        )
        [task_id] = self.both("enqueue", [message], 3600.0)
        return str(task_id)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.both("pause", queue, paused)
        assert self.memory.paused() == self.sqlite.paused()

    @rule(target=tasks, queue=st.sampled_from(QUEUES), parents=st.lists(tasks, min_size=1, max_size=2, unique=True))
    def enqueue_after(self, queue: str, parents: list[str]) -> str:
        message = Message(new_task_id(queue), "t", queue, after=tuple(parents))
        [task_id] = self.both("enqueue", [message], 3600.0)
        return str(task_id)

    @rule(queues=st.permutations(QUEUES), limit=st.integers(1, 3))
    def claim(self, queues: list[str], limit: int) -> None:
        mine = self.memory.claim(queues, "w", limit, 3600.0)
        theirs = self.sqlite.claim(queues, "w", limit, 3600.0)
        assert [(c.id, c.attempt) for c in mine] == [(c.id, c.attempt) for c in theirs]
        for pair in zip(mine, theirs, strict=True):
            self.held[pair[0].id] = pair

    @precondition(lambda self: bool(self.held))
    @rule(
        data=st.data(),
        kind=st.sampled_from(["succeeded", "failed", "retry now", "retry later", "release", "release uncounted"]),
    )
    def settle(self, data: st.DataObject, kind: str) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.held)))
        pair = self.held.pop(task_id)
        self.spent.append(pair)
        mine, theirs = (broker.settle([outcome(claim, kind)]) for broker, claim in zip(self.brokers, pair, strict=True))
        assert mine == theirs, (kind, mine, theirs)

    @precondition(lambda self: bool(self.spent))
    @rule(data=st.data())
    def settle_a_spent_claim(self, data: st.DataObject) -> None:
        """A claim that no longer holds its task: refused, or read as applied when it is the one
        that settled it (a resent settle whose reply was lost); the same answer on both, and no change."""
        pair = data.draw(st.sampled_from(self.spent))
        answers = [
            broker.settle([outcome(claim, "succeeded")]) for broker, claim in zip(self.brokers, pair, strict=True)
        ]
        assert answers[0] == answers[1]

    @precondition(lambda self: bool(self.held))
    @rule()
    def renew(self) -> None:
        pairs = list(self.held.values())
        mine = self.memory.renew([pair[0] for pair in pairs], 3600.0)
        assert mine == self.sqlite.renew([pair[1] for pair in pairs], 3600.0)

    @rule(task_id=tasks)
    def cancel(self, task_id: str) -> None:
        self.both("cancel", task_id)

    @rule(task_id=tasks)
    def retry(self, task_id: str) -> None:
        self.both("retry", task_id)

    @rule(status=st.none() | st.sampled_from([Status.FAILED, Status.CANCELLED, Status.SUCCEEDED, Status.WAITING]))
    def purge(self, status: Status | None) -> None:
        self.both("purge", status, None)

    @invariant()
    def same_tasks_in_the_same_states(self) -> None:
        def seen(broker: MemoryBroker | SQLiteBroker) -> list[tuple[Any, ...]]:
            return [
                (
                    *(t.id, t.queue, t.status, t.attempts, t.priority, t.key, t.result),
                    *(json.dumps(t.error, sort_keys=True), t.eta is None, t.args),
                )
                for t in broker.list(None, None, 1000)
            ]

        assert seen(self.memory) == seen(self.sqlite)
        mine, theirs = self.memory.stats(), self.sqlite.stats()
        assert (mine.queues, mine.counters) == (theirs.queues, theirs.counters)
        breakers = [{name: (b["state"], b["failures"]) for name, b in x.breakers.items()} for x in (mine, theirs)]
        assert breakers[0] == breakers[1]


def outcome(claim: Claim, kind: str) -> Outcome:
    """Every outcome carries the breaker (a release tells it nothing): settle drives it."""
    if kind == "succeeded":
        return Outcome(
            claim.id, claim.token, "succeeded", result=json.dumps(claim.attempt), result_ttl=3600, breaker=BREAKER
        )
    if kind == "failed":
        return Outcome(claim.id, claim.token, "failed", error=ERROR, breaker=BREAKER)
    if kind.startswith("retry"):
        delay = 3600.0 if kind == "retry later" else 0.0
        return Outcome(claim.id, claim.token, "retry", error=ERROR, delay=delay, breaker=BREAKER)
    return Outcome(claim.id, claim.token, "release", uncount=kind == "release uncounted", breaker=BREAKER)


SameAsSQLite.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_memory_behaves_as_sqlite = SameAsSQLite.TestCase
