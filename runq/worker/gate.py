"""Flow control before a run: what the worker and ``app.drain()`` ask the broker first.

A task's circuit breaker and rate limit may hold it back, and a workflow step gets its
parents' results in front of its arguments; a workflow's collector step ends right here,
with its parents' results, and a batch's summary step with its summary, without running
anything. One definition for both, so a drained task is held, refused or fed its parents'
results exactly as a worker's would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runq.worker import policy
from runq.worker.ended import Failed, Finished, Held, Refused
from runq.worker.run import finished
from runq.workflow import BATCH, COLLECT, DependencyError, batch_summary, collected, parent_results

if TYPE_CHECKING:
    from runq.brokers import Broker
    from runq.models import Message
    from runq.tasks import Task


def gate(
    broker: Broker, message: Message, task: Task[Any, Any] | None
) -> list[Any] | Refused | Held | Finished | Failed:
    """The arguments to run ``message`` with, or why it does not run now, or (a collector
    step, a batch's summary step) how it ended.

    A held task goes back to the broker as ``scheduled`` for the time it must wait, its
    attempt given back, so it never fails for it and the rest of its queue keeps flowing.
    Broker errors propagate: the caller decides what an outage means.
    """
    try:
        hold = _hold(broker, task) if task is not None and task.gated else 0.0
        if hold > 0:
            return Held(hold)
        if message.name == COLLECT and message.pass_results == "list":
            return finished(collected(broker, message))[0]
        if message.name == BATCH and message.after_final:
            return finished(batch_summary(broker, message))[0]
        return parent_results(broker, message) if message.pass_results is not None else message.args
    except DependencyError as exc:
        return policy.dependency_failed(str(exc))


def _hold(broker: Broker, task: Task[Any, Any]) -> float:
    """Seconds the task must wait for its breaker (open) or its rate limit; 0 to run now."""
    if task.breaker is not None:
        hold = broker.breaker(task.name, "allow", *task.breaker)
        if hold > 0:
            return hold
    return broker.acquire_rate(task.name, *task.rate) if task.rate is not None else 0.0
