"""Differential, model-based tests (issue 23): memory:// is the reference model, and every real
broker must mean the same thing on programs nobody wrote by hand.

Hypothesis drives the same random program against the memory broker and one real broker (SQLite,
Redis, Redis Cluster, PostgreSQL): batches of enqueues with options (priority, delay, idempotency
key, ``after``, expiry, concurrency slots, debounce), claims, renewals, settles of every kind
(each driving a breaker), settles of spent claims, cancels, retries, purges, pauses, ticks, rate
limits, breakers, heartbeats, and the clock moving forward (leases run out, etas come due,
deadlines pass, results and keys expire). After each step every observable must agree: each
call's answer (ids, claims in order, booleans, counts), every task as ``list`` shows it, ``list``
with a status, queue and limit, ``get``, ``stats`` (counts, counters, breakers), the paused
queues and the live workers.

Time is each broker's own clock, moved without sleeping (tests/support/clock.py). Every duration
is a whole number of ``U`` (1000 s) and the clocks move by whole ``U`` too, so real time, which
passes too (milliseconds per step), never decides whether something is due: a time reached
exactly is passed on every broker, since real time has gone by since it was set.

``RUNQ_MODEL_EXAMPLES`` and ``RUNQ_MODEL_STEPS`` set the number of programs per broker and their
length (CI's defaults below; README, "Reliability", gives the nightly profile).
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from runq.brokers import Broker
from runq.models import (
    DEFAULT_RESULT_TTL,
    BreakerRule,
    Claim,
    Message,
    Outcome,
    Status,
    TaskInfo,
    WorkerInfo,
    new_task_id,
)
from tests.support.clock import Clock, clocked

U = 1000.0  # the model's unit of time (see the module docstring)
NEAR = U / 4  # how far two brokers' remaining times may differ (real time passes between them)
QUEUES = ("a", "b")
SLOTS = {"s1": 1, "s2": 2}  # concurrency slot -> its limit
KEY_TTL = 3 * U
BREAKER = BreakerRule("t", 2, 3 * U)
ERROR = {"type": "RuntimeError", "message": "boom", "traceback": None}
EXAMPLES = int(os.environ.get("RUNQ_MODEL_EXAMPLES", "30"))
STEPS = int(os.environ.get("RUNQ_MODEL_STEPS", "30"))
BROKER_KINDS = ["sqlite", "redis", "redis-cluster", "postgres"]
KINDS = ["succeeded", "failed", "retry now", "retry later", "release", "release later", "release uncounted"]


class SameAsMemory(RuleBasedStateMachine):
    """memory:// and one real broker, driven alike; ``fresh`` gives the real broker's URL."""

    tasks = Bundle("tasks")
    fresh: Callable[[], str]
    kind: str

    def __init__(self) -> None:
        super().__init__()
        self.url = self.fresh()
        memory, memory_clock = clocked("memory://")
        real, real_clock = clocked(self.url)
        self.brokers: tuple[Broker, Broker] = (memory, real)
        self.clocks: tuple[Clock, Clock] = (memory_clock, real_clock)
        self.held: dict[str, tuple[Claim, Claim]] = {}  # task id -> (memory's claim, the real broker's)
        self.spent: list[tuple[Claim, Claim]] = []  # claims settled, or taken over by a later claim
        self.made = itertools.count()

    def teardown(self) -> None:
        for clock in self.clocks:
            clock.close()

    # -- both brokers, one answer ------------------------------------------------------

    def both(self, call: str, *args: Any) -> Any:
        """The same call on both; their answers (or the errors they raise) must be equal."""
        mine, theirs = (answer(getattr(broker, call), *args) for broker in self.brokers)
        assert mine == theirs, f"{call}{args}: memory answered {mine!r}, {self.kind} {theirs!r}"
        return mine[1]

    def near(self, call: str, *args: Any) -> None:
        """A call that answers a duration (a hold, a wait): equal up to the real time between."""
        mine, theirs = (getattr(broker, call)(*args) for broker in self.brokers)
        assert abs(mine - theirs) < NEAR, f"{call}{args}: memory answered {mine!r}, {self.kind} {theirs!r}"

    # -- producing ---------------------------------------------------------------------

    @initialize(target=tasks, queues=st.lists(st.sampled_from(QUEUES), min_size=1, max_size=4))
    def some_tasks(self, queues: list[str]) -> Any:
        messages = [Message(new_task_id(queue), "t", queue, args=[next(self.made)]) for queue in queues]
        return multiple(*self.both("enqueue", messages, KEY_TTL))

    @rule(target=tasks, data=st.data(), parents=st.lists(tasks, max_size=2, unique=True))
    def enqueue(self, data: st.DataObject, parents: list[str]) -> Any:
        """A batch of 1-3 messages with any valid mix of options; a message may wait on tasks
        enqueued before, or on an earlier message of its own batch."""
        batch: list[Message] = []
        for _ in range(data.draw(st.integers(1, 3), label="size")):
            batch.append(data.draw(messages(parents + [m.id for m in batch], next(self.made)), label="message"))
        return multiple(*dict.fromkeys(self.both("enqueue", batch, KEY_TTL)))

    # -- consuming ---------------------------------------------------------------------

    @rule(
        queues=st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a")]),
        limit=st.integers(1, 3),
        lease=st.sampled_from([U, 4 * U]),
    )
    def claim(self, queues: tuple[str, ...], limit: int, lease: float) -> None:
        mine, theirs = (broker.claim(queues, "w", limit, lease) for broker in self.brokers)
        shown = [[(c.id, c.attempt, c.payload) for c in claims] for claims in (mine, theirs)]
        assert shown[0] == shown[1], f"claim{queues, limit}: memory took {shown[0]}, {self.kind} {shown[1]}"
        for pair in zip(mine, theirs, strict=True):
            if pair[0].id in self.held:
                self.spent.append(self.held[pair[0].id])  # its lease ran out: that claim is stale now
            self.held[pair[0].id] = pair

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), lease=st.sampled_from([U, 4 * U]))
    def renew(self, data: st.DataObject, lease: float) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1, max_size=3, unique=True))
        pairs = [self.held[task_id] for task_id in ids]
        mine, theirs = (broker.renew([pair[i] for pair in pairs], lease) for i, broker in enumerate(self.brokers))
        assert mine == theirs, f"renew{ids}: memory answered {mine}, {self.kind} {theirs}"

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        """One or two outcomes in one settle; each but a release drives the breaker."""
        ids = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1, max_size=2, unique=True))
        kinds = [data.draw(st.sampled_from(KINDS), label=f"outcome of {task_id}") for task_id in ids]
        runtime = data.draw(st.sampled_from([None, 0.5]), label="runtime")
        pairs = [self.held.pop(task_id) for task_id in ids]
        self.spent.extend(pairs)
        answers = [
            broker.settle([outcome(pair[i], kind, runtime) for pair, kind in zip(pairs, kinds, strict=True)])
            for i, broker in enumerate(self.brokers)
        ]
        assert answers[0] == answers[1], f"settle{ids} {kinds}: memory {answers[0]}, {self.kind} {answers[1]}"

    @precondition(lambda self: bool(self.spent))
    @rule(data=st.data(), kind=st.sampled_from(KINDS))
    def settle_a_spent_claim(self, data: st.DataObject, kind: str) -> None:
        """A claim that no longer holds its task: refused, or read as applied when it is the one
        that settled it (a settle sent again after its reply was lost)."""
        pair = data.draw(st.sampled_from(self.spent))
        answers = [broker.settle([outcome(pair[i], kind, None)]) for i, broker in enumerate(self.brokers)]
        assert answers[0] == answers[1], f"settle of spent {pair[0].id}: memory {answers[0]}, {self.kind} {answers[1]}"

    @rule(units=st.sampled_from([1, 2, 5]))
    def advance(self, units: int) -> None:
        """Time passes on both clocks: leases run out, etas come due, deadlines and TTLs pass."""
        for clock in self.clocks:
            clock.advance(units * U)

    # -- steering ----------------------------------------------------------------------

    @rule(task_id=tasks)
    def cancel(self, task_id: str) -> None:
        self.both("cancel", task_id)

    @rule(task_id=tasks)
    def retry(self, task_id: str) -> None:
        self.both("retry", task_id)

    @rule(
        status=st.sampled_from(
            [None, Status.FAILED, Status.CANCELLED, Status.SUCCEEDED, Status.PENDING, Status.WAITING]
        ),
        queue=st.sampled_from([None, *QUEUES]),
    )
    def purge(self, status: Status | None, queue: str | None) -> None:
        self.both("purge", status, queue)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.both("pause", queue, paused)

    # -- flow control and workers ----------------------------------------------------------

    @rule(name=st.sampled_from(["t", "u"]), event=st.sampled_from(["allow", "success", "failure"]))
    def breaker(self, name: str, event: Any) -> None:
        self.near("breaker", name, event, BREAKER.failures, BREAKER.seconds)

    @rule(name=st.sampled_from(["t", "u"]))
    def acquire_rate(self, name: str) -> None:
        self.near("acquire_rate", name, 1.0, 2 * U)

    @rule(name=st.sampled_from(["t", "u"]), tick=st.sampled_from(["1", "2"]))
    def take_tick(self, name: str, tick: str) -> None:
        self.both("take_tick", name, tick, 2 * U)

    @rule(worker=st.sampled_from(["w1", "w2"]), ttl=st.sampled_from([U, 3 * U]))
    def heartbeat(self, worker: str, ttl: float) -> None:
        info = WorkerInfo(worker, "host", 1, QUEUES, "thread", 1)
        self.both("heartbeat", info, ttl)

    @rule(worker=st.sampled_from(["w1", "w2"]))
    def unregister(self, worker: str) -> None:
        self.both("unregister", worker)

    # -- reading -----------------------------------------------------------------------

    @rule(task_id=tasks)
    def get(self, task_id: str) -> None:
        mine, theirs = (broker.get(task_id) for broker in self.brokers)
        assert shown([mine]) == shown([theirs]), f"get({task_id}): memory {mine}, {self.kind} {theirs}"

    @rule(
        status=st.sampled_from([None, *Status]),
        queue=st.sampled_from([None, *QUEUES]),
        limit=st.integers(1, 4),
    )
    def list_some(self, status: Status | None, queue: str | None, limit: int) -> None:
        mine, theirs = (shown(broker.list(status, queue, limit)) for broker in self.brokers)
        assert mine == theirs, f"list({status}, {queue}, {limit}):\nmemory {mine}\n{self.kind} {theirs}"

    @invariant()
    def same_everything(self) -> None:
        listed = [broker.list(None, None, 1000) for broker in self.brokers]
        assert shown(listed[0]) == shown(listed[1]), (
            f"tasks:\nmemory {shown(listed[0])}\n{self.kind} {shown(listed[1])}"
        )
        now = time.time() + self.clocks[0].shift  # both clocks: real time plus the same moves
        for mine, theirs in zip(*listed, strict=True):
            if mine.eta is not None and theirs.eta is not None:
                left = [info.eta.timestamp() - now for info in (mine, theirs) if info.eta is not None]
                assert abs(left[0] - left[1]) < NEAR, f"eta of {mine.id}: memory in {left[0]}, {self.kind} {left[1]}"
        stats = [broker.stats() for broker in self.brokers]
        assert stats[0].queues == stats[1].queues, f"counts: memory {stats[0].queues}, {self.kind} {stats[1].queues}"
        assert stats[0].counters == stats[1].counters, (
            f"counters: memory {stats[0].counters}, {self.kind} {stats[1].counters}"
        )
        breakers = [{name: (b["state"], b["failures"]) for name, b in s.breakers.items()} for s in stats]
        assert breakers[0] == breakers[1], f"breakers: memory {breakers[0]}, {self.kind} {breakers[1]}"
        paused = [broker.paused() for broker in self.brokers]
        assert paused[0] == paused[1], f"paused: memory {paused[0]}, {self.kind} {paused[1]}"
        workers = [sorted(w.id for w in broker.workers()) for broker in self.brokers]
        assert workers[0] == workers[1], f"workers: memory {workers[0]}, {self.kind} {workers[1]}"


def answer(call: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What a call answered, or the type of error it raised."""
    try:
        return "answered", call(*args)
    except Exception as exc:  # compared, not swallowed: both must raise the same
        return "raised", type(exc).__name__


@st.composite
def messages(draw: st.DrawFn, parents: list[str], made: int) -> Message:
    """One message with a valid mix of options (runq/options.py: check_flow)."""
    queue = draw(st.sampled_from(QUEUES), label="queue")
    key = draw(st.sampled_from([None, "k1", "k2"]), label="key")
    after = () if not parents else tuple(draw(st.lists(st.sampled_from(parents), max_size=2, unique=True)))
    debounce = draw(st.sampled_from([None, U, 3 * U]), label="debounce") if key and not after else None
    slot = draw(st.sampled_from([None, *SLOTS]), label="slot")
    return Message(
        new_task_id(queue),
        "t",
        queue,
        args=[made],
        priority=draw(st.integers(-1, 1), label="priority"),
        delay=debounce or draw(st.sampled_from([0.0, U, 3 * U]), label="delay"),
        key=key,
        after=after,
        result_ttl=draw(st.sampled_from([2 * U, 86400.0, DEFAULT_RESULT_TTL]), label="result_ttl"),
        expires=draw(st.sampled_from([None, 2 * U, 5 * U]), label="expires"),
        debounce=debounce,
        slot=slot,
        concurrency=SLOTS[slot] if slot else None,
    )


def outcome(claim: Claim, kind: str, runtime: float | None) -> Outcome:
    """Every outcome carries the breaker (a release tells it nothing): settle drives it."""
    if kind == "succeeded":
        result = json.dumps([claim.id[-4:], claim.attempt])
        return Outcome(
            claim.id, claim.token, "succeeded", result=result, result_ttl=2 * U, runtime=runtime, breaker=BREAKER
        )
    if kind == "failed":
        return Outcome(claim.id, claim.token, "failed", error=ERROR, runtime=runtime, breaker=BREAKER)
    if kind.startswith("retry"):
        delay = U if kind == "retry later" else 0.0
        return Outcome(claim.id, claim.token, "retry", error=ERROR, delay=delay, runtime=runtime, breaker=BREAKER)
    delay = U if kind == "release later" else 0.0
    return Outcome(claim.id, claim.token, "release", delay=delay, uncount=kind == "release uncounted", breaker=BREAKER)


def shown(tasks: list[TaskInfo | None]) -> list[tuple[Any, ...] | None]:
    """What a task shows, but for times (each broker's own clock; etas are compared apart)."""
    return [
        None
        if t is None
        else (
            *(t.id, t.queue, t.name, t.status.value, t.attempts, t.priority, t.key, t.args, t.kwargs, t.worker),
            *(t.result, json.dumps(t.error, sort_keys=True), t.eta is None),
            *(t.enqueued_at is None, t.started_at is None, t.finished_at is None),
        )
        for t in tasks
    ]


def emptied(url: str, drop: bool = False) -> str:
    """A PostgreSQL broker's schema emptied (its tables truncated: much cheaper than a new schema
    and its migrations per program), or dropped."""
    import psycopg

    from runq.brokers.postgres import postgres_conninfo

    conninfo, schema = postgres_conninfo(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if drop:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            return url
        found = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> 'version'", (schema,)
        ).fetchall()
        if found:
            conn.execute("TRUNCATE " + ", ".join(f'"{schema}"."{name}"' for (name,) in found) + " RESTART IDENTITY")
    return url


@pytest.fixture(params=BROKER_KINDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A new, empty broker's URL for each program."""
    kind = request.param
    if kind == "sqlite":

        def removed() -> str:  # the last program's file (closed by now), so a long run keeps one
            for old in tmp_path.glob("runq.db*"):
                old.unlink()
            return f"sqlite:///{tmp_path / 'runq.db'}"

        yield removed
    elif kind == "postgres":
        database: str = request.getfixturevalue("postgres_database")
        url = f"{database}?schema=m_{secrets.token_hex(6)}"
        yield lambda: emptied(url)
        emptied(url, drop=True)
    else:
        server = request.getfixturevalue("redis_cluster" if kind == "redis-cluster" else "redis_server")

        def flushed() -> str:
            server.flush()
            return str(server.url)

        yield flushed


# A PostgreSQL broker's pool draws from `random` in its own thread (a new connection's jittered
# lifetime): Hypothesis takes that for a strategy using `random` when it falls inside a draw.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.timeout(0 if "RUNQ_MODEL_EXAMPLES" in os.environ else 900)  # a long profile has no limit
def test_every_broker_behaves_as_memory(fresh: Callable[[], str], request: pytest.FixtureRequest) -> None:
    kind = request.node.callspec.params["fresh"]
    machine = type(f"SameAsMemory_{kind}", (SameAsMemory,), {"fresh": staticmethod(fresh), "kind": kind})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
