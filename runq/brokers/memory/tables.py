"""The memory broker's state: plain dicts and heaps, one instance per broker, no I/O.

Every task is one :class:`Record` (the fields of the SQLite row, same names). The heaps
are indexes with lazy deletion: an entry carries the record's ``version`` when it was
pushed, and is stale (skipped when popped) once the record moved on. :meth:`Tables.place`
is the one place a record's indexes are updated after a change of status.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from runq.brokers.rules import HELD
from runq.models import Status, TaskInfo, task_info

SEATED = (Status.PENDING, Status.RUNNING)  # the states that hold (or are about to take) a seat of a slot


@dataclass(eq=False)
class Record:
    """One task, as SQLite's ``runq_tasks`` row has it (see runq/brokers/schema.sql)."""

    seq: int
    id: str
    queue: str
    name: str
    status: Status
    priority: int
    ready_at: float  # when it became (or becomes) ready to run
    payload: str
    result_ttl: float
    enqueued_at: float
    attempts: int = 0
    key: str | None = None
    key_expires_at: float | None = None
    token: str | None = None
    lease_until: float | None = None
    worker: str | None = None
    result: str | None = None  # JSON text
    error: str | None = None  # JSON text {type, message, traceback}
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None  # gone after this; None keeps it (failed tasks)
    deadline: float | None = None  # not started by then: cancelled (Expired)
    slot: str | None = None  # what its concurrency limit counts
    concurrency: int | None = None  # runs of ``slot`` at once
    version: int = 0  # bumped by every place(): older heap entries are stale
    redelivered: bool = False  # this delivery is a crash's redelivery (memory://?redeliver=p)
    progress: str | None = None  # JSON {value, message, at}: the latest progress report
    changes: list[tuple[Status, str | None, float]] | None = None  # watched: its log (follow.py)
    shown: Status | None = None  # watched: the status its log last recorded

    def visible(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now

    @property
    def held(self) -> bool:
        """Waiting for a seat of its slot (scheduled without an eta)."""
        return self.status is Status.SCHEDULED and self.ready_at == HELD

    def info(self) -> TaskInfo:
        return task_info(vars(self))


@dataclass
class Tables:
    """Everything one memory broker holds. Callers hold the broker's lock."""

    tasks: dict[str, Record] = field(default_factory=dict)  # insertion order is seq order
    ready: dict[str, list[tuple[int, float, int, int, str]]] = field(default_factory=dict)  # -prio, ready_at, seq
    due: dict[str, list[tuple[float, int, int, str]]] = field(default_factory=dict)  # ready_at, seq
    running: dict[str, dict[str, None]] = field(default_factory=dict)  # queue -> ids
    expiring: list[tuple[float, str]] = field(default_factory=list)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (queue, key) -> id
    # parent -> waiting children, each with its dependency mode (True: after_final; rules.py)
    children: dict[str, dict[str, bool]] = field(default_factory=dict)
    parents: dict[str, dict[str, None]] = field(default_factory=dict)  # waiting child -> unresolved parents
    counters: dict[str, int] = field(default_factory=dict)
    ticks: dict[tuple[str, str], float] = field(default_factory=dict)
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (tat, tail)
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_metrics: dict[tuple[str, str], float] = field(default_factory=dict)
    workers: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (encoded info, expires_at)
    seq: int = 0
    now: float = 0.0  # the broker's clock during the current change (dates a watched task's log)
    # Flow control (SPEC §9): deadlines of pending/scheduled tasks, the tasks that hold a seat
    # of each (queue, slot) by state, held tasks by slot, and the slots a change just freed.
    deadlines: dict[str, list[tuple[float, int, int, str]]] = field(default_factory=dict)  # deadline, seq
    seats: dict[tuple[str, str], dict[Status, set[str]]] = field(default_factory=dict)
    held: dict[tuple[str, str], list[tuple[int, int, int, str]]] = field(default_factory=dict)  # -prio, seq
    freed: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, slot) -> its limit
    paused: set[str] = field(default_factory=set)

    def count(self, name: str, amount: int = 1) -> None:
        if amount:
            self.counters[name] = self.counters.get(name, 0) + amount

    def place(self, record: Record) -> None:
        """Index a record after its status (or ready time, or expiry) changed."""
        record.version += 1
        if record.status is Status.PENDING:
            entry = (-record.priority, record.ready_at, record.seq, record.version, record.id)
            heapq.heappush(self.ready.setdefault(record.queue, []), entry)
        elif record.held:
            assert record.slot is not None
            entry4 = (-record.priority, record.seq, record.version, record.id)
            heapq.heappush(self.held.setdefault((record.queue, record.slot), []), entry4)
        elif record.status is Status.SCHEDULED:
            heapq.heappush(
                self.due.setdefault(record.queue, []), (record.ready_at, record.seq, record.version, record.id)
            )
        if record.deadline is not None and record.status in (Status.PENDING, Status.SCHEDULED):
            expiry = (record.deadline, record.seq, record.version, record.id)
            heapq.heappush(self.deadlines.setdefault(record.queue, []), expiry)
        if record.slot is not None:
            self._seat(record)
        running = self.running.setdefault(record.queue, {})
        if record.status is Status.RUNNING:
            running[record.id] = None
        else:
            running.pop(record.id, None)
        if record.expires_at is not None:
            heapq.heappush(self.expiring, (record.expires_at, record.id))
        if record.changes is not None and record.status is not record.shown:  # watched (follow.py)
            record.shown = record.status
            record.changes.append((record.status, record.progress, self.now))

    def _seat(self, record: Record) -> None:
        """Keep the slot's seats by state; a task that gave its seat up frees the slot."""
        assert record.slot is not None
        key = (record.queue, record.slot)
        seats = self.seats.setdefault(key, {Status.PENDING: set(), Status.RUNNING: set()})
        had = any(record.id in ids for ids in seats.values())
        for ids in seats.values():
            ids.discard(record.id)
        if record.status in SEATED:
            seats[record.status].add(record.id)
        elif had:
            self.freed[key] = record.concurrency or 1

    def seated(self, queue: str, slot: str, status: Status | None = None) -> int:
        """Tasks of a slot that are pending or running (or only those in ``status``)."""
        seats = self.seats.get((queue, slot))
        if seats is None:
            return 0
        return len(seats[status]) if status is not None else sum(len(ids) for ids in seats.values())

    def pop_held(self, queue: str, slot: str) -> Record | None:
        heap = self.held.get((queue, slot))
        while heap:
            _, _, version, task_id = heapq.heappop(heap)
            record = self.tasks.get(task_id)
            if record is not None and record.version == version and record.held:
                return record
        return None

    def pop_deadline(self, queue: str, now: float) -> Record | None:
        """A pending or scheduled task of ``queue`` whose deadline has passed, if any."""
        heap = self.deadlines.get(queue)
        while heap and heap[0][0] <= now:
            _, _, version, task_id = heapq.heappop(heap)
            record = self.tasks.get(task_id)
            if record is not None and record.version == version and record.status in (Status.PENDING, Status.SCHEDULED):
                return record
        return None

    def current(self, task_id: str, version: int, status: Status) -> Record | None:
        """The record a heap entry points at, if that entry is still its latest."""
        record = self.tasks.get(task_id)
        if record is None or record.version != version or record.status is not status:
            return None
        return record

    def pop_ready(self, queue: str) -> Record | None:
        heap = self.ready.get(queue)
        while heap:
            _, _, _, version, task_id = heapq.heappop(heap)
            record = self.current(task_id, version, Status.PENDING)
            if record is not None:
                return record
        return None

    def has_ready(self, queue: str) -> bool:
        heap = self.ready.get(queue)
        while heap:
            _, _, _, version, task_id = heap[0]
            if self.current(task_id, version, Status.PENDING) is not None:
                return True
            heapq.heappop(heap)
        return False

    def next_due(self, queue: str) -> Record | None:
        """The scheduled task of ``queue`` with the earliest eta (left in place)."""
        heap = self.due.get(queue)
        while heap:
            _, _, version, task_id = heap[0]
            record = self.current(task_id, version, Status.SCHEDULED)
            if record is not None:
                return record
            heapq.heappop(heap)
        return None

    def delete(self, record: Record) -> None:
        """Forget a task (purged or expired); its stale heap entries are skipped later."""
        self.tasks.pop(record.id, None)
        self.running.get(record.queue, {}).pop(record.id, None)
        if record.slot is not None:
            for ids in self.seats.get((record.queue, record.slot), {}).values():
                ids.discard(record.id)
        if record.key is not None and self.keys.get((record.queue, record.key)) == record.id:
            del self.keys[(record.queue, record.key)]
        for parent in self.parents.pop(record.id, {}):
            self.children.get(parent, {}).pop(record.id, None)

    def delete_expired(self, now: float) -> None:
        while self.expiring and self.expiring[0][0] < now:
            expires_at, task_id = heapq.heappop(self.expiring)
            record = self.tasks.get(task_id)
            if record is not None and record.expires_at == expires_at:
                self.delete(record)
