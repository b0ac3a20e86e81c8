"""``memory://``: the broker of one process, for tests (SPEC §12). No server, no I/O.

It is a real :class:`~runq.brokers.base.Broker`, not a mock: priorities, delays, keys,
leases with fencing tokens, lease expiry, workflows, rate limits and breakers follow the
same rules as SQLite's (the conformance suites run on it), on dicts and heaps behind one
lock. A :class:`threading.Condition` on that lock wakes ``wait`` and ``wait_for_work``.

Each instance is its own broker: ``runq.App("memory://")`` gets a fresh, empty one, and
nothing is shared between Apps or processes (so ``runq worker`` refuses the URL). Its state
lives as long as the App's broker: after ``app.close()`` the App starts an empty one.

Two things only a broker in the test's own process can offer:

- **Its clock can move.** Every time the broker uses (etas, leases, result and key TTLs,
  rate limits, breakers) is ``time.time()`` plus an offset that :meth:`MemoryBroker.advance`
  moves forward, never back. ``app.drain(scheduled=True)`` moves it to each next eta in
  turn, so delayed tasks and retry back-offs run at once, in eta order, and everything
  else ages as it would have.
- **Crashes on demand.** ``memory://?redeliver=p&seed=s``: an attempt that ends (succeeded,
  retry or failed; not a release) is, with probability ``p``, lost as if its worker died
  after running it and before settling: its lease is taken back (``pending``, error
  ``WorkerLost``, the run counted as an attempt and as retried) and the late settle is
  rejected, exactly what a lease expiry does on every broker. The next delivery of that
  attempt is never lost again, so each run is delivered at most twice. ``seed`` makes the
  draws repeatable.
"""

from __future__ import annotations

import builtins
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from runq.brokers import rules
from runq.brokers.base import BreakerEvent, Broker
from runq.brokers.feed import Feed
from runq.brokers.memory import flow, follow
from runq.brokers.memory.tables import Record, Tables
from runq.brokers.rules import CANCELLED, WORKER_LOST, dependency_error
from runq.models import (
    COUNTERS,
    FINAL_STATUSES,
    Claim,
    Message,
    Outcome,
    Percentiles,
    ProgressReport,
    QueueStats,
    Stats,
    Status,
    TaskInfo,
    WorkerInfo,
)

T = TypeVar("T")


def memory_options(url: str) -> tuple[float, int | None]:
    """``(redeliver, seed)`` from ``memory://[?redeliver=p][&seed=s]``; ``ValueError`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "memory" or parts.netloc or parts.path:
        raise ValueError(f"not a memory URL (expected memory:// or memory://?redeliver=0.2&seed=7): {url!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"redeliver", "seed"})
    if unknown:
        raise ValueError(f"unknown memory:// option(s) {', '.join(unknown)}: use redeliver and seed")
    try:
        redeliver = float(query.get("redeliver", ["0"])[-1])
        seed = int(query["seed"][-1]) if "seed" in query else None
    except ValueError:
        raise ValueError(f"memory:// redeliver must be a number in [0, 1] and seed an integer: {url!r}") from None
    if not 0.0 <= redeliver <= 1.0:  # also refuses NaN
        raise ValueError(f"memory:// redeliver must be in [0, 1], got {redeliver}")
    return redeliver, seed


class MemoryBroker(Broker):
    kind = "memory"

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._redeliver, seed = memory_options(url)
        self._random = random.Random(seed)
        self._tables = Tables()
        self._offset = 0.0
        self._cond = threading.Condition(threading.Lock())
        self._interrupted = False  # see interrupt()

    # -- the clock ------------------------------------------------------------------

    def now(self) -> float:
        """The broker's clock: wall time plus every :meth:`advance` so far."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the broker's clock ``seconds`` forward: etas come due, leases and TTLs run out."""
        if not seconds >= 0:
            raise ValueError(f"the clock only moves forward: advance({seconds!r})")
        with self._cond:
            self._offset += seconds
            self._cond.notify_all()

    def next_eta(self, queues: Sequence[str]) -> float | None:
        """The earliest eta (broker clock) of a scheduled task in ``queues``, or ``None``."""
        with self._cond:
            found = [r.ready_at for q in queues if (r := self._tables.next_due(q)) is not None]
        return min(found, default=None)

    def queues(self) -> builtins.list[str]:
        """Every queue that has held a task, by name."""
        with self._cond:
            return sorted(self._tables.running)  # place() files every task under its queue there

    def _change(self, change: Callable[[Tables, float], T]) -> T:
        """Apply one state change under the lock and wake whoever waits on the broker. Slots the
        change freed release their held tasks in the same step."""
        with self._cond:
            now = self._tables.now = self.now()
            done = change(self._tables, now)
            flow.release_freed(self._tables, now)
            self._cond.notify_all()
            return done

    # -- producing ----------------------------------------------------------------

    def enqueue(self, messages: Sequence[Message], key_ttl: float) -> builtins.list[str]:
        payloads = [message.payload for message in messages]  # a bad payload raises before any change

        def change(tables: Tables, now: float) -> builtins.list[str]:
            ids: builtins.list[str] = []
            for message, payload in zip(messages, payloads, strict=True):
                if message.key is not None:
                    existing = self._held_key(tables, message.queue, message.key, now)
                    holder = tables.tasks.get(existing) if existing is not None else None
                    if existing is not None and message.debounce is not None and holder is not None:
                        if flow.updatable(holder):
                            flow.debounce(tables, holder, message, payload, key_ttl, now)
                            ids.append(existing)
                            continue
                        del tables.keys[(message.queue, message.key)]  # started: the new task takes the key
                        holder.key = None
                    elif existing is not None:
                        ids.append(existing)
                        continue
                ids.append(message.id)
                self._insert(tables, message, payload, key_ttl, now)
            return ids

        return self._change(change)

    @staticmethod
    def _insert(tables: Tables, message: Message, payload: str, key_ttl: float, now: float) -> None:
        delayed = message.delay > 0
        status = Status.WAITING if message.after else Status.SCHEDULED if delayed else Status.PENDING
        tables.seq += 1
        record = Record(
            seq=tables.seq,
            id=message.id,
            queue=message.queue,
            name=message.name,
            status=status,
            priority=message.priority,
            ready_at=now + message.delay if delayed else now,
            payload=payload,
            result_ttl=message.result_ttl,
            enqueued_at=now,
            key=message.key,
            key_expires_at=now + key_ttl if message.key is not None else None,
            deadline=None if message.expires is None else now + message.expires,
            slot=message.slot,
            concurrency=message.concurrency,
        )
        tables.tasks[record.id] = record
        if record.key is not None:
            tables.keys[(record.queue, record.key)] = record.id
        tables.place(record)
        tables.count("enqueued")
        if message.after:
            flow.link(tables, record, message, now)

    @staticmethod
    def _held_key(tables: Tables, queue: str, key: str, now: float) -> str | None:
        """The id holding ``key`` in ``queue``; an expired hold is released for the new task."""
        task_id = tables.keys.get((queue, key))
        if task_id is None:
            return None
        record = tables.tasks.get(task_id)
        if record is not None and (record.key_expires_at or 0.0) > now and record.visible(now):
            return task_id
        del tables.keys[(queue, key)]
        if record is not None:
            record.key = None
        return None

    # -- consuming ----------------------------------------------------------------

    def claim(self, queues: Sequence[str], worker_id: str, limit: int, lease: float) -> builtins.list[Claim]:
        def change(tables: Tables, now: float) -> builtins.list[Claim]:
            tables.delete_expired(now)
            for queue in queues:
                self._reclaim_expired(tables, queue, now)
                flow.expire_due(tables, queue, now)
                self._promote_due(tables, queue, now)
            flow.release_freed(tables, now)
            claims: builtins.list[Claim] = []
            for queue in queues:
                if queue in tables.paused:
                    continue
                while len(claims) < limit and (record := tables.pop_ready(queue)) is not None:
                    if record.deadline is not None and record.deadline <= now:
                        tables.count("cancelled", flow.expire(tables, record, now))
                    elif flow.full(tables, record):
                        flow.hold(tables, record)
                    else:
                        claims.append(self._take(tables, record, worker_id, lease, now))
            return claims

        return self._change(change)

    @staticmethod
    def _take(tables: Tables, record: Record, worker_id: str, lease: float, now: float) -> Claim:
        record.status, record.attempts = Status.RUNNING, record.attempts + 1
        record.token, record.lease_until = uuid.uuid4().hex, now + lease
        record.worker, record.started_at = worker_id, now
        tables.place(record)
        return Claim(record.id, record.queue, record.payload, record.attempts, record.token)

    @staticmethod
    def _reclaim_expired(tables: Tables, queue: str, now: float) -> None:
        """Leases that ran out go back to pending, the lost run still counted (a poison pill
        that kills every worker ends failed, not in a loop)."""
        for task_id in list(tables.running.get(queue, {})):
            record = tables.tasks[task_id]
            if record.lease_until is not None and record.lease_until < now:
                MemoryBroker._lose(tables, record, now)

    @staticmethod
    def _lose(tables: Tables, record: Record, now: float) -> None:
        """Take a claim back as a lease expiry does: pending again, error ``WorkerLost``."""
        record.status, record.error, record.token, record.lease_until = Status.PENDING, WORKER_LOST, None, None
        record.ready_at = now
        tables.place(record)
        tables.count("retried")

    @staticmethod
    def _promote_due(tables: Tables, queue: str, now: float) -> None:
        while (record := tables.next_due(queue)) is not None and record.ready_at <= now:
            record.status = Status.PENDING
            tables.place(record)

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        with self._cond:
            if self._interrupted:
                return
            if any(self._tables.has_ready(queue) for queue in queues if queue not in self._tables.paused):
                return
            wake = [r.ready_at for q in queues if (r := self._tables.next_due(q)) is not None]
            wake += [
                lease
                for q in queues
                for task_id in self._tables.running.get(q, {})
                if (lease := self._tables.tasks[task_id].lease_until) is not None
            ]
            until = min(wake, default=None)
            self._cond.wait(timeout if until is None else max(0.0, min(timeout, until - self.now())))

    def interrupt(self) -> None:
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def renew(self, claims: Sequence[Claim], lease: float) -> builtins.list[bool]:
        def change(tables: Tables, now: float) -> builtins.list[bool]:
            held = []
            for claim in claims:
                record = self._held(tables, claim.id, claim.token)
                if record is not None and rules.renews(record.lease_until or 0.0, now, lease):
                    record.lease_until = now + lease
                held.append(record is not None)
            return held

        return self._change(change)

    @staticmethod
    def _held(tables: Tables, task_id: str, token: str) -> Record | None:
        record = tables.tasks.get(task_id)
        if record is None or record.status is not Status.RUNNING or record.token != token:
            return None
        return record

    def settle(self, outcomes: Sequence[Outcome]) -> builtins.list[bool]:
        errors = [None if outcome.error is None else json.dumps(outcome.error) for outcome in outcomes]

        def change(tables: Tables, now: float) -> builtins.list[bool]:
            accepted = []
            for outcome, error in zip(outcomes, errors, strict=True):
                record = self._held(tables, outcome.id, outcome.token)
                if record is not None and outcome.kind != "release" and self._crashes(record):
                    self._lose(tables, record, now)  # lost before its settle: its worker never reported
                    accepted.append(False)
                    continue
                if record is not None:
                    self._apply(tables, record, outcome, error, now)
                repeat = record is None and self._repeat(tables, outcome)
                event = rules.breaker_event(outcome)
                if event is not None and outcome.breaker is not None:  # a late run counts too, once
                    rule = outcome.breaker
                    flow.breaker(tables, rule.name, event, rule.failures, rule.seconds, now, outcome.token)
                accepted.append(record is not None or repeat)
            return accepted

        return self._change(change)

    @staticmethod
    def _repeat(tables: Tables, outcome: Outcome) -> bool:
        """Whether ``outcome`` was applied already: its claim's token is the one that settled the
        task (a settle sent again after its reply was lost reads as applied, as on every broker)."""
        record = tables.tasks.get(outcome.id)
        if record is None or not record.visible(tables.now):  # past its result_ttl: gone
            return False
        return record.token == outcome.token and record.status is not Status.RUNNING

    def _crashes(self, record: Record) -> bool:
        """Whether this attempt's worker dies before settling it (``?redeliver=p``)."""
        if record.redelivered:  # the redelivery of a lost attempt is never lost again
            record.redelivered = False
            return False
        lost = self._redeliver > 0 and self._random.random() < self._redeliver
        record.redelivered = lost
        return lost

    @staticmethod
    def _apply(tables: Tables, record: Record, outcome: Outcome, error: str | None, now: float) -> None:
        """One accepted outcome, with SQLite's meaning (``SQLiteBroker._settle_statement``). The
        token stays (no longer running, it fences nothing): a repeat of this outcome is recognised."""
        record.lease_until = None
        started = None if outcome.runtime is None else now - outcome.runtime
        if outcome.kind in ("succeeded", "failed"):
            succeeded = outcome.kind == "succeeded"
            record.status = Status.SUCCEEDED if succeeded else Status.FAILED
            if succeeded:
                record.result = outcome.result
            record.error = None if succeeded else error
            record.finished_at = now
            record.expires_at = now + outcome.result_ttl if succeeded else None
            record.started_at = record.started_at if started is None else started
            tables.place(record)
            tables.count(outcome.kind)
            cause = None if succeeded else dependency_error(record.id, "failed")
            tables.count("cancelled", flow.release_children(tables, record.id, cause, now))
        elif outcome.kind == "retry":
            record.status = Status.SCHEDULED if outcome.delay > 0 else Status.PENDING
            record.error, record.ready_at = error, now + max(0.0, outcome.delay)
            tables.place(record)
            tables.count("retried")
        else:  # release: held back (rate limit, breaker) or handed back at shutdown
            record.status = Status.SCHEDULED if outcome.delay > 0 else Status.PENDING
            if outcome.delay > 0:
                record.ready_at = now + outcome.delay
            record.started_at = None
            record.attempts -= 1 if outcome.uncount else 0
            tables.place(record)

    # -- progress and events --------------------------------------------------------

    def progress(self, reports: Sequence[ProgressReport]) -> builtins.list[bool]:
        return self._change(lambda tables, now: [follow.report(tables, report, now) for report in reports])

    def follow(self, task_id: str) -> Feed:
        return follow.MemoryFeed(self.now, self._cond, self._tables, task_id)

    # -- inspecting and steering --------------------------------------------------

    def get(self, task_id: str) -> TaskInfo | None:
        with self._cond:
            record = self._tables.tasks.get(task_id)
            return record.info() if record is not None and record.visible(self.now()) else None

    def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        def done() -> bool:
            record = self._tables.tasks.get(task_id)
            return record is None or not record.visible(self.now()) or record.status in FINAL_STATUSES

        with self._cond:
            self._cond.wait_for(done, timeout)
        return self.get(task_id)

    def cancel(self, task_id: str) -> bool:
        def change(tables: Tables, now: float) -> bool:
            record = tables.tasks.get(task_id)
            if record is None or record.status in FINAL_STATUSES:
                return False
            record.status, record.error, record.token, record.lease_until = Status.CANCELLED, CANCELLED, None, None
            record.finished_at, record.expires_at = now, now + record.result_ttl
            tables.place(record)
            flow.unlink(tables, task_id)
            error = dependency_error(task_id, "was cancelled")
            tables.count("cancelled", 1 + flow.release_children(tables, task_id, error, now))
            return True

        return self._change(change)

    def retry(self, task_id: str) -> bool:
        def change(tables: Tables, now: float) -> bool:
            record = tables.tasks.get(task_id)
            if record is None or not record.visible(now) or record.status not in (Status.FAILED, Status.CANCELLED):
                return False
            record.status, record.attempts, record.ready_at, record.token = Status.PENDING, 0, now, None
            record.result = record.error = record.started_at = record.finished_at = record.expires_at = None
            record.deadline = None  # put back by hand: it runs, whatever its expiry said
            record.redelivered = False
            tables.place(record)
            return True

        return self._change(change)

    def list(self, status: Status | None, queue: str | None, limit: int) -> builtins.list[TaskInfo]:
        with self._cond:
            now = self.now()
            found: builtins.list[TaskInfo] = []
            for record in reversed(self._tables.tasks.values()):
                if len(found) >= limit:
                    break
                if _matches(record, status, queue) and record.visible(now):
                    found.append(record.info())
            return found

    def purge(self, status: Status | None, queue: str | None) -> int:
        if status is Status.RUNNING:
            raise ValueError("running tasks cannot be purged: cancel them first")

        def change(tables: Tables, now: float) -> int:
            doomed = [
                record
                for record in tables.tasks.values()
                if (record.status in FINAL_STATUSES if status is None else record.status is status)
                and (queue is None or record.queue == queue)
            ]
            for record in doomed:
                tables.delete(record)
            return sum(record.visible(now) for record in doomed)  # one past its result_ttl was gone already

        return self._change(change)

    def stats(self) -> Stats:
        with self._cond:
            now = self.now()
            counts: dict[str, dict[str, int]] = {}
            recent: builtins.list[Record] = []
            for record in self._tables.tasks.values():
                if not record.visible(now):
                    continue
                per_queue = counts.setdefault(record.queue, {})
                per_queue[record.status.value] = per_queue.get(record.status.value, 0) + 1
                if (
                    record.status is Status.SUCCEEDED
                    and record.started_at is not None
                    and (record.finished_at or 0.0) >= now - 300
                ):
                    recent.append(record)
            counters = dict.fromkeys(COUNTERS, 0) | self._tables.counters
            breakers = flow.breaker_states(self._tables)
        last_minute = sum(1 for r in recent if (r.finished_at or 0.0) >= now - 60)
        return Stats(
            queues={name: QueueStats(**found) for name, found in sorted(counts.items())},
            counters=counters,
            wait=Percentiles.of([max(0.0, (r.started_at or 0.0) - r.ready_at) for r in recent]),
            run=Percentiles.of([(r.finished_at or 0.0) - (r.started_at or 0.0) for r in recent]),
            throughput=last_minute / 60.0,
            breakers=breakers,
        )

    # -- flow control -------------------------------------------------------------

    def take_tick(self, name: str, tick: str, ttl: float) -> bool:
        return self._change(lambda tables, now: flow.take_tick(tables, name, tick, ttl, now))

    def acquire_rate(self, name: str, rate: float, per: float) -> float:
        return self._change(lambda tables, now: flow.acquire_rate(tables, name, rate, per, now))

    def breaker(self, name: str, event: BreakerEvent, failures: int, seconds: float) -> float:
        return self._change(lambda tables, now: flow.breaker(tables, name, event, failures, seconds, now))

    def pause(self, queue: str, paused: bool) -> bool:
        def change(tables: Tables, now: float) -> bool:
            was = queue in tables.paused
            if paused:
                tables.paused.add(queue)
            else:
                tables.paused.discard(queue)
            return was != paused

        return self._change(change)

    def paused(self) -> set[str]:
        with self._cond:
            return set(self._tables.paused)

    # -- per-task metrics and workers -----------------------------------------------

    def add_task_metrics(self, deltas: Mapping[str, Mapping[str, float]]) -> None:
        rows = rules.metric_rows(deltas)
        with self._cond:
            for queue, name, amount in rows:
                self._tables.task_metrics[(queue, name)] = self._tables.task_metrics.get((queue, name), 0.0) + amount

    def task_metrics(self) -> dict[str, dict[str, float]]:
        with self._cond:
            found = [(queue, name, value) for (queue, name), value in self._tables.task_metrics.items()]
        return rules.metric_totals(found)

    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        def change(tables: Tables, now: float) -> None:
            tables.workers[worker.id] = (worker.encode(), now + ttl)
            for worker_id, (_, expires_at) in list(tables.workers.items()):
                if expires_at < now:
                    del tables.workers[worker_id]

        self._change(change)

    def unregister(self, worker_id: str) -> None:
        with self._cond:
            self._tables.workers.pop(worker_id, None)

    def workers(self) -> builtins.list[WorkerInfo]:
        with self._cond:
            now = self.now()
            live = sorted((wid, info) for wid, (info, expires_at) in self._tables.workers.items() if expires_at >= now)
        return [WorkerInfo.decode(info) for _, info in live]

    def close(self) -> None:
        """Nothing to release; waiters are woken so none outlives the App that closed it."""
        with self._cond:
            self._cond.notify_all()


def _matches(record: Record, status: Status | None, queue: str | None) -> bool:
    return (status is None or record.status is status) and (queue is None or record.queue == queue)
