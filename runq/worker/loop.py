"""The worker: claims tasks, hands them to a pool, settles their outcomes, keeps leases.

Three threads share one table of in-flight claims, each with a single job:

* the **claimer** takes as many tasks as there are free slots, in one broker call,
  and blocks on the broker while there is nothing to do;
* the **settler** turns finished runs into outcomes (retry policy lives here) and
  settles everything that finished meanwhile in one broker call (waiting up to
  ``settle_interval`` for ``settle_batch`` outcomes to gather);
* the **keeper** renews the leases of running tasks every half second, stops runs
  whose claim is gone (cancelled, or taken over after a stall), and publishes the
  heartbeat.

What a SIGKILL runs twice: a run that finished but whose outcome was not settled yet is
run again by another worker once its lease expires. The pool starts no run while
``concurrency + settle_batch`` runs are open (started, or finished and unsettled), so that
is the most a kill can duplicate; with ``settle_batch=0``, one per slot
(docs/reliability.md). A claim held ahead whose lease was not confirmed (claimed or
renewed) for half a lease, as after a SIGSTOP or a long broker outage, starts only once
the keeper's next renewal says it is still this worker's: a thawed worker does not run
what was taken over meanwhile.

Shutdown (SPEC §3): the first SIGTERM/SIGINT stops claiming and lets running tasks
finish within ``grace``; the second, or the end of ``grace``, returns the tasks
still running to their queue and exits.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import Any, TypeVar

from runq import signing
from runq.app import App
from runq.brokers import DEFAULT_URL, Broker, connect
from runq.context import TaskContext
from runq.errors import BrokerUnavailable
from runq.fastinit import maker
from runq.logs import mask_url
from runq.models import Claim, Message, Outcome, WorkerInfo
from runq.observe import Observers, TaskOutcome
from runq.observe.task_hooks import TaskHooks
from runq.observe.task_log import MALFORMED, TaskLog
from runq.observe.task_metrics import TaskMetrics
from runq.settings import Settings
from runq.tasks import Task
from runq.worker import policy
from runq.worker.ended import Ended, Failed, Finished, HandedBack, Held, Refused, Settled, Stopped
from runq.worker.gate import gate
from runq.worker.policy import Policy, decide, task_outcome
from runq.worker.pools import Pool, create_pool
from runq.worker.run import Job

log = logging.getLogger("runq.worker")
T = TypeVar("T")

RENEW_INTERVAL = 0.5
HEARTBEAT_INTERVAL = 2.0
HEARTBEAT_TTL = 10.0
IDLE_WAIT = 1.0
PREFETCH = 1  # claims held beyond the running ones, per slot
SHORT_TASK = 0.005  # seconds: tasks this short on average are claimed further ahead...
SHORT_PREFETCH = 3  # ...this many per slot, so a round trip moves more of them,
SHORT_HELD = 64  # ...and at least this many in all (≤ 320 ms of work: no hoarding)
MAX_BACKOFF = 5.0
_make_job = maker(Job)
SETTLE_CALL = 256  # outcomes one settle call may carry, at least (held claims, not runs, may queue beyond the runs)


@dataclass
class InFlight:
    """A claim the worker holds, from its claim until its outcome is settled."""

    claim: Claim
    message: Message | None  # None when ``refused`` says why it was not read
    policy: Policy
    started: float
    refused: Refused | None = None  # why it is failed unread: a bad signature, or not a runq message
    done: bool = False  # its outcome is waiting to be settled
    notes: Mapping[str, str] = field(default_factory=dict)  # from run-side middleware, for on_finish


class Worker:
    def __init__(self, app: App, app_path: str, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or app.settings
        if self.settings.url != app.settings.url and app.settings.url != DEFAULT_URL:
            log.warning(
                "the worker's broker %s differs from %s that its App names: the worker and its tasks use %s",
                mask_url(self.settings.url),
                mask_url(app.settings.url),
                mask_url(self.settings.url),
            )
        app.configure(self.settings)  # a task that enqueues from inside a task uses the worker's broker
        if self.settings.recycles and self.settings.pool != "process":
            log.warning(
                "max_tasks_per_child and max_memory_per_child apply to the process pool only: the %s pool has no"
                " children to replace",
                self.settings.pool,
            )
        self.app_path = app_path
        self.concurrency = self.settings.effective_concurrency
        self._runtime = 2 * SHORT_TASK  # running average of how long a task runs; starts "long"
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.broker: Broker = connect(self.settings.url, self.settings.connect_timeout)
        self.signer = signing.signer(self.settings.signing_keys)  # None: runs unsigned messages too
        self.pool: Pool = create_pool(self.settings, app, app_path, self._finished)
        self.counts: Counter[str] = Counter()
        self.task_metrics = TaskMetrics(lambda name: name in app.tasks)  # flushed with heartbeats
        # Everyone who watches outcomes, users' middleware and runq's own, through one seam.
        hooks = [TaskHooks(app.tasks)] if TaskHooks.wanted(app.tasks) else []
        self.observers = Observers([*app.middleware, *hooks, self.task_metrics, TaskLog(self.id)])
        self.started_at = time.time()
        self._inflight: dict[str, InFlight] = {}
        self._cond = threading.Condition()
        # SimpleQueue: put and get in C (queue.Queue: ~1.3 µs of Python locking per task, uncontended)
        self._outcomes: queue.SimpleQueue[tuple[Outcome, InFlight] | None] = queue.SimpleQueue()
        self._stopping = threading.Event()  # no more claims
        self._forced = threading.Event()  # second signal: stop waiting for running tasks
        self._halted = threading.Event()  # all threads end
        self._crashed = False

    # -- running ------------------------------------------------------------------

    def run(self) -> int:
        """Work until a signal (or :meth:`stop`), then shut down cleanly; returns the exit code."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.pool.start()
        self._try(lambda: self.broker.heartbeat(self.info(), HEARTBEAT_TTL))  # visible from the start
        threads = [
            threading.Thread(target=self._guard(self._claim_loop), name="runq-claimer", daemon=True),
            threading.Thread(target=self._guard(self._settle_loop), name="runq-settler", daemon=True),
            threading.Thread(target=self._guard(self._keep_loop), name="runq-keeper", daemon=True),
        ]
        for thread in threads:
            thread.start()
        log.info(
            "worker %s started: broker %s, queues %s, pool %s x%d",
            self.id,
            mask_url(self.settings.url),
            ",".join(self.settings.queues),
            self.settings.pool,
            self.concurrency,
        )
        if self.signer is not None:  # key ids only: which keys, never the keys
            log.info("worker %s runs only signed messages (%r)", self.id, self.signer)
        while not self._stopping.wait(0.2):
            pass
        self.broker.interrupt()  # the claimer's idle wait ends now, not at its timeout
        threads[0].join()
        self._drain()
        self._outcomes.put(None)
        threads[1].join()
        self._halted.set()
        threads[2].join()
        self._try(lambda: self.task_metrics.flush(self.broker.add_task_metrics))
        self._try(lambda: self.broker.unregister(self.id))
        self.broker.close()
        log.info("worker %s stopped", self.id)
        return 1 if self._crashed else 0

    def stop(self, force: bool = False) -> None:
        if force:
            self._forced.set()
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        """A bug in one of the worker's threads stops the worker (exit 1) instead of hanging it."""

        def guarded() -> None:
            try:
                loop()
            except Exception:
                log.critical("worker thread %s crashed; stopping", threading.current_thread().name, exc_info=True)
                self._crashed = True
                self.stop(force=True)

        return guarded

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = not self._stopping.is_set()
        log.warning(
            "%s: %s",
            signal.Signals(signum).name,
            f"finishing running tasks (up to {self.settings.grace}s); again to stop now"
            if first
            else "returning running tasks to the queue",
        )
        self.stop(force=not first)

    def _drain(self) -> None:
        """Hand back unstarted claims at once; wait for running tasks up to ``grace``;
        return the ones still running to their queue."""
        deadline = time.monotonic() + self.settings.grace
        unstarted = self.pool.take_unstarted()
        if unstarted:
            with self._cond:
                entries = [self._inflight[job.id] for job in unstarted]
            releases = [decide(e.claim, e.policy, HandedBack(started=False)) for e in entries]
            self._try(partial(self.broker.settle, releases))
            self._forget(entries)
        with self._cond:
            while self._inflight and not self._forced.is_set() and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            leftover = [entry for entry in self._inflight.values() if not entry.done]
        if leftover:
            self.pool.terminate()
            log.warning("returning %d running task(s) to the queue", len(leftover))
            releases = [decide(entry.claim, entry.policy, HandedBack(started=True)) for entry in leftover]
            self._try(partial(self.broker.settle, releases))
        else:
            self.pool.terminate()

    # -- claiming -----------------------------------------------------------------

    def _claim_loop(self) -> None:
        queues = self.settings.queues
        while not self._stopping.is_set():
            with self._cond:
                # Claim in rounds of at least a quarter of what may be held: every slot is
                # still busy meanwhile (3/4 of ``capacity`` covers them), and one round trip
                # moves many tasks instead of one per finished task.
                while self.capacity - len(self._inflight) < self._round() and not self._stopping.is_set():
                    self._cond.wait(1.0)
                free = self.capacity - len(self._inflight)
            if self._stopping.is_set():
                return
            sent = time.monotonic()  # the leases run from (no earlier than) here
            claims = self._retrying(partial(self.broker.claim, queues, self.id, free, self.settings.lease))
            if claims is None:
                continue
            if self._stopping.is_set() and claims:  # claimed during shutdown: hand them straight back
                releases = [decide(c, Policy(), HandedBack(started=False)) for c in claims]
                self._try(partial(self.broker.settle, releases))
                return
            entries = [self._entry(claim) for claim in claims]
            with self._cond:
                for entry in entries:
                    self._inflight[entry.claim.id] = entry
            jobs = []
            for entry in entries:
                begun = self._start(entry)
                if isinstance(begun, Job):
                    jobs.append(begun)
                else:
                    self._end(entry, begun)  # never run: refused or held back
            self.pool.submit_many(jobs, sent)
            if len(claims) < free:  # the queues ran dry: block until a wake-up, not claim again
                self._idle(queues)

    def _idle(self, queues: tuple[str, ...]) -> None:
        if self._try(lambda: self.broker.wait_for_work(queues, IDLE_WAIT) or True) is None:
            self._stopping.wait(IDLE_WAIT)

    def _entry(self, claim: Claim) -> InFlight:
        """A claim's place in the in-flight table. With signing keys, only the text a signature
        vouches for is decoded."""
        try:
            raw = claim.payload if self.signer is None else self.signer.open(claim.id, claim.payload)
            message = Message.decode(raw, claim.id, claim.queue)
        except signing.BadSignature as exc:
            return InFlight(claim, None, Policy(), time.monotonic(), policy.bad_signature(claim, str(exc)))
        except ValueError as exc:  # not a runq message: failed at once, its raw text kept
            return InFlight(claim, None, Policy(), time.monotonic(), policy.malformed(claim, str(exc)))
        return InFlight(claim, message, Policy.resolve(message, self.app.tasks.get(message.name)), time.monotonic())

    def _start(self, entry: InFlight) -> Job | Refused | Held | Finished | Failed:
        """The job to run for a claim, or why it does not run (now)."""
        claim, message = entry.claim, entry.message
        if message is None:  # unread: a bad signature, or not a runq message (_entry says which)
            assert entry.refused is not None
            error = entry.refused.error
            log.error(
                "%s %s moved to failed: %s", error.type, claim.id, error.message, extra={"task": {"id": claim.id}}
            )
            return entry.refused
        refused = policy.admit(claim, entry.policy)
        if refused is not None:
            return refused
        task = self.app.tasks.get(message.name)
        args = message.args
        if (task is not None and task.gated) or message.pass_results is not None:
            prepared = self._prepare(entry, message, task)
            if not isinstance(prepared, list):
                return prepared
            args = prepared
        if log.isEnabledFor(logging.DEBUG):
            log.debug("started", extra={"task": {"task_id": claim.id, "task": message.name, "worker": self.id}})
        return _make_job(  # every task: without the frozen __init__ (runq/fastinit.py)
            id=claim.id,
            name=message.name,
            queue=claim.queue,
            attempt=claim.attempt,
            args=args,
            kwargs=message.kwargs,
            timeout=entry.policy.timeout,
            trace=message.trace,
            soft_timeout=entry.policy.soft_timeout,
            token=claim.token,
        )

    def _prepare(
        self, entry: InFlight, message: Message, task: Task[Any, Any] | None
    ) -> list[Any] | Refused | Held | Finished | Failed:
        """Flow control before a run (never on the plain path): see :func:`runq.worker.gate.gate`.
        A broker outage holds the task back rather than failing it."""
        try:
            return gate(self.broker, message, task)
        except BrokerUnavailable as exc:
            log.warning("broker unavailable before starting %s: %s", entry.claim.id, exc)
            return Held(IDLE_WAIT)

    def _end(self, entry: InFlight, ended: Settled) -> None:
        """Settle how a claim ended, as :func:`~runq.worker.policy.decide` says."""
        self._settle(entry, decide(entry.claim, entry.policy, ended))

    def _settle(self, entry: InFlight, outcome: Outcome) -> None:
        """Hand an outcome to the settler thread, which settles everything that finished
        meanwhile in one broker call. Never a broker call here: this runs on pool threads
        and on the async pool's event loop, which must not wait on the broker (nor stall
        through a broker outage)."""
        with self._cond:
            entry.done = True
        self._outcomes.put((outcome, entry))

    # -- settling -----------------------------------------------------------------

    def _finished(self, job: Job, ended: Ended) -> None:
        """Called by the pool when a run ends."""
        with self._cond:
            entry = self._inflight.get(job.id)
        if entry is None:
            self.pool.settled([job.id])  # forgotten meanwhile: its run is not open any more
            return
        if entry.message is None:
            return
        if isinstance(ended, Stopped):
            self._forget([entry])
            self.observers.finish(self._context(entry), TaskOutcome("cancelled"))
            return
        if isinstance(ended, (Finished, Failed)):
            self._runtime += 0.2 * (ended.duration - self._runtime)
            entry.notes = ended.notes
        self._end(entry, ended)

    @property
    def capacity(self) -> int:
        """Claims held at most: the running ones plus a prefetch that grows for short tasks
        (fewer round trips per task) and stays small for long ones (no hoarding)."""
        if self._runtime < SHORT_TASK:
            return max(SHORT_HELD, self.concurrency * (1 + SHORT_PREFETCH))
        return self.concurrency * (1 + PREFETCH)

    def _round(self) -> int:
        """The fewest claims worth a round trip: a quarter of ``capacity``."""
        return max(1, self.capacity // 4)

    def _settle_loop(self) -> None:
        gather, interval = max(1, self.settings.settle_batch), self.settings.settle_interval
        most = max(SETTLE_CALL, self.concurrency + self.settings.settle_batch)  # every run that can be open
        while (item := self._outcomes.get()) is not None:
            batch = [item]
            deadline = time.monotonic() + interval
            while len(batch) < most:
                wait = deadline - time.monotonic() if len(batch) < gather else 0.0
                try:
                    more = self._outcomes.get(timeout=wait) if wait > 0 else self._outcomes.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._outcomes.put(None)
                    break
                batch.append(more)
            self._settle_batch(batch)

    def _settle_batch(self, batch: list[tuple[Outcome, InFlight]]) -> None:
        outcomes = [outcome for outcome, _ in batch]
        accepted = self._retrying(partial(self.broker.settle, outcomes), forever=True)
        for (outcome, entry), ok in zip(batch, accepted or [False] * len(batch), strict=True):
            self._report(outcome, entry, ok)  # (an outcome's breaker was driven by that same settle)
        self._forget([entry for _, entry in batch])

    def _report(self, outcome: Outcome, entry: InFlight, accepted: bool) -> None:
        if not accepted:
            self.counts["rejected"] += 1
            log.warning(
                "late outcome rejected: the task was cancelled or taken over",
                extra={"task": {"task_id": entry.claim.id, "queue": entry.claim.queue, "worker": self.id}},
            )
            return
        self.counts[_COUNTED[outcome.kind]] += 1
        if outcome.kind == "release":  # held back or handed back: not an end of the attempt
            if log.isEnabledFor(logging.DEBUG):
                fields = {"task_id": entry.claim.id, "queue": entry.claim.queue, "retry_in": round(outcome.delay, 3)}
                log.debug("deferred", extra={"task": fields})
            return
        if self.observers.finishes:
            self.observers.finish(self._context(entry), task_outcome(outcome, self._wait(entry, outcome)))

    def _context(self, entry: InFlight) -> TaskContext:
        message, claim = entry.message, entry.claim
        name = message.name if message is not None else MALFORMED
        trace = message.trace if message is not None else None
        return TaskContext(claim.id, name, claim.queue, claim.attempt, trace, dict(entry.notes))

    def _forget(self, entries: list[InFlight]) -> None:
        with self._cond:
            for entry in entries:
                self._inflight.pop(entry.claim.id, None)
            if self._stopping.is_set() or self.capacity - len(self._inflight) >= self._round():
                self._cond.notify_all()  # the claimer has a round to claim (or shutdown waits)
        self.pool.settled([entry.claim.id for entry in entries])  # (outside _cond: the pool's lock comes first)

    @staticmethod
    def _wait(entry: InFlight, outcome: Outcome) -> float | None:
        """Seconds from due (the id's enqueue time + delay) to started, for a first attempt of
        a task without parents (a retry's or a step's due time is unknown here)."""
        message = entry.message
        if message is None or entry.claim.attempt != 1 or message.after or outcome.runtime is None:
            return None
        try:
            enqueued = int(entry.claim.id.rpartition(".")[2][:13], 16) / 1e6
        except ValueError:  # not an id runq made: no enqueue time to read
            return None
        return time.time() - outcome.runtime - enqueued - message.delay

    # -- leases and heartbeat -----------------------------------------------------

    def _keep_loop(self) -> None:
        next_heartbeat = 0.0
        while not self._halted.wait(RENEW_INTERVAL):
            with self._cond:
                held_claims = [entry.claim for entry in self._inflight.values()]
            if held_claims:
                self._renew(held_claims)
                self._hand_back_paused()
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
                self._try(lambda: self.broker.heartbeat(self.info(), HEARTBEAT_TTL))
                self._try(lambda: self.task_metrics.flush(self.broker.add_task_metrics))

    def _renew(self, claims: list[Claim]) -> None:
        sent = time.monotonic()
        held = self._try(lambda: self.broker.renew(claims, self.settings.lease))
        if held is None:
            return  # broker unreachable: keep running; a lost lease shows up at settle
        for claim, ok in zip(claims, held, strict=True):
            if not ok:
                self.pool.cancel(claim.id)
        # Claims held ahead may start (one unconfirmed for half a lease waits for this).
        self.pool.renewed([claim.id for claim, ok in zip(claims, held, strict=True) if ok], sent)

    def _hand_back_paused(self) -> None:
        """Claims taken ahead (prefetched) for a queue paused since go back unstarted, so no task
        of a paused queue starts within a keeper round of the pause (SPEC §9). One broker read
        per round while such claims wait here, never one per task; claims skip paused queues."""
        started = self.pool.started()
        with self._cond:
            waiting = {e.claim.queue for i, e in self._inflight.items() if not e.done and i not in started}
        paused = self._try(self.broker.paused) if waiting else None
        if not paused or not paused & waiting:
            return
        jobs = self.pool.take_unstarted(paused & waiting)
        with self._cond:
            entries = [self._inflight[job.id] for job in jobs if job.id in self._inflight]
        if entries:
            log.info("queue(s) %s paused: handing back %d unstarted task(s)", ",".join(sorted(paused)), len(entries))
        for entry in entries:
            self._end(entry, HandedBack(started=False))

    def info(self) -> WorkerInfo:
        """The heartbeat. ``current`` is what a user means by running: started in the pool.
        A claim taken ahead for a free slot is ``prefetched``, though the broker already
        marks it running (see :attr:`capacity`); one that ended and waits to be settled is
        neither."""
        started = self.pool.started()
        with self._cond:
            held = [task_id for task_id, entry in self._inflight.items() if not entry.done]
        current = tuple(task_id for task_id in held if task_id in started)
        prefetched = tuple(task_id for task_id in held if task_id not in started)
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=self.settings.queues,
            pool=self.settings.pool,
            concurrency=self.concurrency,
            current=current,
            counts=dict(self.counts),
            started_at=self.started_at,
            last_seen=time.time(),
            prefetched=prefetched,
        )

    # -- broker outages -----------------------------------------------------------

    def _try(self, call: Callable[[], T]) -> T | None:
        """One attempt; a broker outage is logged, not raised (the caller's loop goes on)."""
        try:
            return call()
        except (BrokerUnavailable, ConnectionError, OSError) as exc:
            log.warning("broker unavailable: %s", exc)
            return None

    def _retrying(self, call: Callable[[], T], forever: bool = False) -> T | None:
        """Call until the broker answers, backing off; gives up at shutdown unless ``forever``."""
        pause = 0.1
        while True:
            result = self._try(call)
            if result is not None:
                return result
            if self._forced.is_set() or (self._stopping.is_set() and not forever):
                return None
            if forever:
                time.sleep(pause)
            else:
                self._stopping.wait(pause)
            pause = min(MAX_BACKOFF, pause * 2)


_COUNTED = {"succeeded": "succeeded", "retry": "retried", "failed": "failed", "release": "deferred"}
