"""``app.drain()``: run what is ready in the calling thread, until nothing is (SPEC §12).

A worker without threads, pools or leases to keep: claim one task, run it with the run
and policy every pool uses (:func:`~runq.worker.run.run_job`, :func:`~runq.worker.gate.gate`,
:func:`~runq.worker.policy.decide`), settle it, tell the middleware, claim the next. One at
a time, so a workflow step released by its parent's settle is ready for the very next claim.

With ``scheduled=True`` (memory:// only) an empty round moves the broker's clock to the
earliest eta among the queues and goes on, so delayed tasks, retry back-offs and tasks held
by a rate limit or an open breaker run at once, in eta order, on a clock that agrees.

Not a worker's guarantees: a task's ``timeout`` is not enforced (the task runs in this
thread), and leases are not renewed (a task is claimed for ``settings.lease``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Protocol

from runq.brokers.memory import MemoryBroker
from runq.context import TaskContext
from runq.models import Claim, DrainResult, Message, Outcome
from runq.observe.task_log import MALFORMED
from runq.options import check_queue
from runq.worker import policy
from runq.worker.ended import Failed, Finished, Settled
from runq.worker.gate import gate
from runq.worker.policy import Policy, decide, task_outcome
from runq.worker.run import Job, Registry, run_job

if TYPE_CHECKING:
    from runq.brokers import Broker
    from runq.settings import Settings
    from runq.tasks import Task


class Drainable(Registry, Protocol):
    """What ``drain`` needs of its App (the App is one; this module never imports app.py)."""

    @property
    def broker(self) -> Broker: ...

    @property
    def settings(self) -> Settings: ...


MAX_RUNS = 100_000  # a task that enqueues itself forever fails the drain instead of hanging it


def drain(app: Drainable, queues: Sequence[str] | None, scheduled: bool) -> DrainResult:
    """Run every ready task of ``queues`` (``None``: every queue, by name) until none is."""
    broker = app.broker
    if scheduled and not isinstance(broker, MemoryBroker):
        raise ValueError(
            f"drain(scheduled=True) moves the broker's clock, which only memory:// can do ({broker.url.split(':')[0]}"
            ":// cannot); use drain() to run what is ready now"
        )
    chosen = tuple(check_queue(queue) for queue in queues) if queues is not None else None
    worker = f"drain:{socket.gethostname()}:{os.getpid()}"
    before = broker.stats().counters
    runs = 0
    while True:
        names = chosen or _every_queue(broker)
        claims = broker.claim(names, worker, 1, app.settings.lease) if names else []
        if claims:
            runs += 1
            if runs > MAX_RUNS:
                raise RuntimeError(f"drain() ran {MAX_RUNS} tasks and more are ready: does a task enqueue itself?")
            _run(app, broker, claims[0])
        elif not (scheduled and isinstance(broker, MemoryBroker) and _fast_forward(broker, names)):
            break
    after = broker.stats().counters
    return DrainResult(**{field.name: after[field.name] - before[field.name] for field in fields(DrainResult)})


def _every_queue(broker: Broker) -> tuple[str, ...]:
    if isinstance(broker, MemoryBroker):
        return tuple(broker.queues())
    return tuple(broker.stats().queues)


def _fast_forward(broker: MemoryBroker, queues: Sequence[str]) -> bool:
    """Move the clock to the earliest eta in ``queues``; ``False`` when nothing is scheduled."""
    eta = broker.next_eta(queues)
    if eta is None:
        return False
    broker.advance(max(0.0, eta - broker.now()))
    return True


def _run(app: Drainable, broker: Broker, claim: Claim) -> None:
    """One claim, from its start to its settle and the middleware's ``on_finish``."""
    task: Task[Any, Any] | None = None
    ended: Settled
    try:
        message: Message | None = Message.decode(claim.payload, claim.id, claim.queue)
    except ValueError as exc:
        message = None
        rules, ended = Policy(), policy.malformed(claim, str(exc))
    if message is not None:
        task = app.tasks.get(message.name)
        rules = Policy.resolve(message, task)
        ended = policy.admit(claim, rules) or _start(app, broker, claim, message, task)
    outcome = decide(claim, rules, ended)
    [accepted] = broker.settle([outcome])
    if not accepted or outcome.kind == "release":
        return  # cancelled meanwhile, lost (memory://?redeliver), or held back: no attempt ended here
    _finish(app, claim, message, ended, outcome)


def _start(app: Drainable, broker: Broker, claim: Claim, message: Message, task: Task[Any, Any] | None) -> Settled:
    args = gate(broker, message, task)
    if not isinstance(args, list):
        return args  # refused, held back, or a collector step that ended without running
    job = Job(
        claim.id, message.name, claim.queue, claim.attempt, args, message.kwargs, None, message.trace, token=claim.token
    )
    return _run_job(app, job)


def _run_job(app: Drainable, job: Job) -> Finished | Failed:
    """``run_job`` here; from inside a running event loop (an async test calling ``drain()``),
    in a helper thread, since ``asyncio.run`` cannot start a loop inside another."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_job(app, job)
    with ThreadPoolExecutor(1, thread_name_prefix="runq-drain") as helper:
        return helper.submit(run_job, app, job).result()


def _finish(app: Drainable, claim: Claim, message: Message | None, ended: Settled, outcome: Outcome) -> None:
    observers = app.observers
    if not observers.finishes:
        return
    notes = dict(ended.notes) if isinstance(ended, Finished | Failed) else {}
    name = message.name if message is not None else MALFORMED
    trace = message.trace if message is not None else None
    context = TaskContext(claim.id, name, claim.queue, claim.attempt, trace, notes)
    observers.finish(context, task_outcome(outcome, None))
