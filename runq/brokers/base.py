"""The one interface between runq and a storage engine.

The app, the worker, the CLI and the dashboard speak only to :class:`Broker`.
Every method is a small, atomic state change or read; policy (back-off times,
whether an error is retryable, how many attempts a task gets) is decided in
Python and passed in, so the SQLite transactions and the Redis Lua scripts stay
small and mean the same thing. Methods work on batches where a hot path would
otherwise pay one round trip per task: ``enqueue``, ``claim`` and ``settle``.

Timestamps are the broker's clock (seconds since the epoch); callers pass
durations, never absolute times, so workers with skewed clocks agree.

Each method is named after its Redis Lua twin (``lua/<name>.lua``).
"""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Literal

from runq.brokers.feed import Feed
from runq.models import Claim, Message, Outcome, ProgressReport, Stats, Status, TaskInfo, WorkerInfo

BreakerEvent = Literal["allow", "success", "failure"]


class Broker(ABC):
    """A task store with leases, fencing tokens and a dead-letter set.

    Implementations must be safe to use from several threads of one process
    (the worker claims, settles and renews from different threads) and from
    many processes at once.
    """

    url: str
    kind: str  # "sqlite", "redis", "postgres", "memory": picks the asyncio edge (brokers.asynchronous)

    # -- producing --------------------------------------------------------------

    @abstractmethod
    def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        """Store all messages atomically, in one round trip; return the ids in order.

        A message whose idempotency ``key`` is already held in its queue (for at most
        ``key_ttl`` seconds, and only while that task exists) is not stored: its slot in
        the result holds the existing task's id. Messages with ``delay > 0`` become
        ``scheduled``, the others ``pending``. Raises ``BrokerUnavailable``.

        Flow control (SPEC §9): a message with ``expires`` gets the deadline ``now + expires``;
        one with ``concurrency`` counts against its ``slot``. A message with ``debounce`` whose
        key is held by a task that has not started (``pending`` or ``scheduled``, no attempt
        yet) replaces that task instead: its payload and flow fields become the message's,
        it becomes ``scheduled`` at ``now + delay``, the key's hold is renewed, and its id is
        returned. A key held by a task that started is taken over by the new task.
        """

    # -- consuming --------------------------------------------------------------

    @abstractmethod
    def claim(self, queues: Sequence[str], worker_id: str, limit: int, lease: float) -> list[Claim]:
        """Take up to ``limit`` ready tasks, earlier queues first, for ``lease`` seconds.

        Within a queue: higher priority first, then the order tasks became ready.
        In the same atomic step the broker promotes due ``scheduled`` tasks and
        reclaims expired leases of these queues: an expired task goes back to
        ``pending`` with error ``WorkerLost``, its lost run still counted, so the
        worker fails a task whose ``attempt`` exceeds its policy (a poison pill).
        Each claim increments ``attempts`` and gets a new fencing token.

        Flow control, in the same atomic step: a paused queue is skipped (its housekeeping
        still runs); a ``pending`` or ``scheduled`` task past its deadline ends ``cancelled``
        with error ``Expired`` (its dependents are cancelled as for a cancel) instead of
        starting; a task whose slot already has ``concurrency`` runs is *held*: ``scheduled``
        without an eta (``ready_at`` infinite) and its attempt not used. A slot frees when one
        of its tasks leaves ``pending``/``running`` for another state (settle, cancel,
        expiry); then as many held tasks as its limit allows, beyond its pending and running
        ones, become ``pending`` (highest priority, then oldest, first) and workers are woken.
        """

    @abstractmethod
    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a task may be ready in ``queues`` or ``timeout`` passes.

        Spurious wake-ups are allowed; busy polling is not. A scheduled task's due
        time counts as work: the wait ends by then.
        """

    @abstractmethod
    def renew(self, claims: Sequence[Claim], lease: float) -> list[bool]:
        """Extend the leases of running claims; ``False`` where the claim is no longer held.

        A held claim's lease becomes ``now + lease`` once less than half of it is left
        (``rules.renews``), so renewing often costs few writes; a longer lease is never shortened.
        A claim is no longer held when the task was cancelled or its lease expired
        and another worker took it: the worker must stop that run and drop its result.
        """

    @abstractmethod
    def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Apply outcomes in one round trip; ``False`` where the fencing token is stale.

        A repeat of an outcome already applied (the same claim's token: a settle sent again
        because its reply was lost) is ``True`` and changes nothing.

        ``succeeded`` stores the result for ``result_ttl``; ``retry`` schedules the
        task ``delay`` seconds from now; ``failed`` moves it to the dead-letter set
        (kept until purged); ``release`` returns it to ``pending`` (``scheduled`` in
        ``delay`` seconds when ``delay > 0``).

        A task that ends ``succeeded`` releases the tasks waiting on it (``after``)
        whose other parents have succeeded too; one that ends ``failed`` cancels its
        waiting dependents, and theirs, with an error naming it. That happens in the
        same atomic step for dependents in the same queue, and right after it, by a
        repeatable call that survives a crash in between, for dependents elsewhere.

        An outcome with a ``breaker`` also drives that circuit breaker (``succeeded``: a
        success; ``retry``, ``failed``: a failure), in the same step: the same transaction on
        SQLite, PostgreSQL and memory://; on Redis, whose breaker keys carry their own hash
        tag, in the same round trip. A late outcome (rejected: the task was cancelled or taken
        over) still counts, since its run did happen; a repeat never counts twice.
        """

    # -- progress and events (SPEC §10) -------------------------------------------

    @abstractmethod
    def progress(self, reports: Sequence[ProgressReport]) -> builtins.list[bool]:
        """Store the latest progress of running claims, stamped with the broker's clock, in one
        round trip; ``False`` where the claim is no longer the task's (its token is stale, or
        the task is not running): a stale attempt never overwrites a newer one's progress. A
        watched task's followers see each stored report as a change. Off the hot path: only
        tasks that call ``runq.current().progress()`` make it, coalesced (runq/worker/progress.py).
        """

    @abstractmethod
    def follow(self, task_id: str) -> Feed:
        """Start following a task's changes (status and progress): see runq/brokers/feed.py.

        Reads the task (``feed.first``; ``None`` for an unknown task) so that no change after
        that read is missed: where changes are pushed, the task is marked followed (only then
        are its changes published) after the listener is ready. Close the feed when done.
        """

    # -- inspecting and steering ------------------------------------------------

    @abstractmethod
    def get(self, task_id: str) -> TaskInfo | None:
        """The task's current state, or ``None`` when it does not exist (any more)."""

    @abstractmethod
    def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        """Block until the task is final (or ``timeout`` passes); return its state.

        Returns ``None`` when the task does not exist. Waits on a notification where
        the broker has one; never a busy loop.
        """

    @abstractmethod
    def cancel(self, task_id: str) -> bool:
        """Cancel a task that is not final yet; ``False`` when it was already final or unknown.

        A running task becomes ``cancelled`` at once; its worker learns on its next
        ``renew`` and stops it, and its late outcome is rejected. Tasks waiting on it
        (``after``) are cancelled too, as when a parent fails.
        """

    @abstractmethod
    def retry(self, task_id: str) -> bool:
        """Put a ``failed`` or ``cancelled`` task back to ``pending`` with its attempts reset
        (and no deadline: a task put back by hand runs, even one that expired)."""

    @abstractmethod
    def list(self, status: Status | None, queue: str | None, limit: int) -> list[TaskInfo]:
        """Tasks in a state (any state for ``None``), newest first, at most ``limit``."""

    @abstractmethod
    def purge(self, status: Status | None, queue: str | None) -> int:
        """Delete tasks in a final state (``failed`` by default); running ones are never touched."""

    @abstractmethod
    def stats(self) -> Stats:
        """Counts per queue and state, counters, and latency over the last five minutes."""

    # -- flow control: periodic ticks, rate limits, circuit breakers --------------

    @abstractmethod
    def take_tick(self, name: str, tick: str, ttl: float) -> bool:
        """Claim one tick of a periodic schedule: ``True`` for exactly one caller per
        ``(name, tick)`` within ``ttl`` seconds, however many beat processes ask."""

    @abstractmethod
    def acquire_rate(self, name: str, rate: float, per: float) -> float:
        """Take a token from the bucket of task ``name`` (``rate`` tokens per ``per`` seconds,
        shared by every worker); ``0.0`` when taken, else the seconds to wait before asking
        again. Waiting callers are given successive slots, so they come back one by one.
        """

    @abstractmethod
    def breaker(self, name: str, event: BreakerEvent, failures: int, seconds: float) -> float:
        """Drive the circuit breaker of task ``name``; returns seconds to hold a run (0: go).

        ``allow`` asks before a run: closed answers 0; open answers the time left; an open
        breaker whose time is up becomes ``half_open`` and lets exactly this caller run as
        the probe (another probe is allowed when none reported within ``seconds``).
        ``success`` closes it. ``failure`` counts a failed attempt: the ``failures``-th in a
        row, or a failed probe, opens it for ``seconds``. Both answer 0.
        """

    # -- queues: pause and resume (SPEC §9) -----------------------------------------

    @abstractmethod
    def pause(self, queue: str, paused: bool) -> bool:
        """Pause (``paused=True``) or resume a queue; ``False`` when it already was so.

        While paused, enqueue is accepted and running tasks finish, but no claim takes a task
        of it. Resuming wakes idle workers.
        """

    @abstractmethod
    def paused(self) -> set[str]:
        """The queues paused now."""

    # -- per-task metrics: counted by workers, summed here --------------------------

    @abstractmethod
    def add_task_metrics(self, deltas: Mapping[str, Mapping[str, float]]) -> None:
        """Add one worker's per-task metric deltas (``queue -> field -> amount``, see
        runq/observe/task_metrics.py) to the fleet's totals: all of them or none. Called with the
        heartbeat, never per task, so it stays off the claim/settle path."""

    @abstractmethod
    def task_metrics(self) -> dict[str, dict[str, float]]:
        """The fleet's per-task metric totals, ``queue -> field -> total``."""

    # -- workers ----------------------------------------------------------------

    @abstractmethod
    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        """Publish a worker's state; it drops out of :meth:`workers` after ``ttl`` seconds."""

    @abstractmethod
    def unregister(self, worker_id: str) -> None:
        """Remove a worker at a clean shutdown."""

    @abstractmethod
    def workers(self) -> builtins.list[WorkerInfo]:
        """Workers whose heartbeat is still live."""

    def storage_bytes(self) -> int | None:
        """Bytes the broker's store takes now: what queued and retained (finished, kept for
        ``result_ttl``) tasks cost (docs/reliability.md, "Retention"). Redis: ``used_memory``
        (summed over a cluster's masters); PostgreSQL: runq's tables with their indexes and TOAST;
        SQLite: the file and its WAL. ``None`` when the broker cannot say (``memory://``, a Redis
        user not allowed ``INFO``)."""
        return None

    @abstractmethod
    def interrupt(self) -> None:
        """End ``wait_for_work`` at once, now and from now on: the worker that owns this broker
        is stopping, and its claimer should not sit out an idle wait first (a SIGTERM would
        otherwise take up to a second). Thread-safe; never raises."""

    # -- lifecycle --------------------------------------------------------------

    def ping(self) -> None:
        """Check the connection; raises ``BrokerUnavailable``."""
        self.stats()

    @abstractmethod
    def close(self) -> None:
        """Release connections; the broker must not be used afterwards."""
