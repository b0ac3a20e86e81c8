"""What a claim's end means for its task: the one place that decides it.

Every end the worker meets — a run that finished, failed, overran or lost its child,
and a claim it never ran (malformed, lost too often, held back, handed back at
shutdown) — becomes the broker's :class:`~runq.models.Outcome` in :func:`decide`.
The retry policy (how many attempts, how long between them) lives here too, resolved
at the worker from the producer's explicit choice, else the task's decorator default.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runq.errors import ErrorKind, retries_on
from runq.fastinit import maker
from runq.models import DEFAULT_RESULT_TTL, BreakerRule, Claim, Message, Outcome
from runq.observe.middleware import FinishStatus, TaskOutcome
from runq.worker.ended import Crashed, Error, Failed, Finished, HandedBack, Held, Refused, Settled, TimedOut

if TYPE_CHECKING:
    from runq.tasks import Task

__all__ = [
    "Policy",
    "admit",
    "backoff_delay",
    "bad_signature",
    "decide",
    "dependency_failed",
    "malformed",
    "retries_on",
    "task_outcome",
]


@dataclass(frozen=True)
class Policy:
    """The retry policy a worker applies to one message: the producer's explicit choice,
    else the task's decorator default as registered at the worker, else runq's default.

    Resolving at the worker means ``app.enqueue("name")`` from a producer that does not
    import the task still gets the task's declared retries and timeout.
    """

    retries: int = 3
    backoff: float = 2.0
    backoff_max: float = 3600.0
    jitter: bool = True
    timeout: float | None = None
    soft_timeout: float | None = None  # runq.SoftTimeout raised inside the task (runq/worker/soft.py)
    retry_for: tuple[type[BaseException], ...] = ()  # empty: every error is retried
    result_ttl: float = DEFAULT_RESULT_TTL
    breaker: BreakerRule | None = None  # told how each run ended, in the settle of its outcome

    @classmethod
    def resolve(cls, message: Message, task: Task[Any, Any] | None) -> Policy:
        values: dict[str, Any] = {"result_ttl": message.result_ttl}
        if task is not None:
            values["retry_for"] = task.retry_for
            if task.breaker is not None:
                values["breaker"] = BreakerRule(task.name, *task.breaker)
        for name in ("retries", "backoff", "backoff_max", "jitter", "timeout", "soft_timeout"):
            value = getattr(message, name)
            if value is None and task is not None:
                value = getattr(task.defaults, name)
            if value is not None:
                values[name] = value
        return _make_policy(**values) if cls is Policy else cls(**values)  # every task: runq/fastinit.py

    def delay(self, retry: int) -> float:
        return backoff_delay(retry, self.backoff, self.backoff_max, self.jitter)


_make_policy = maker(Policy)
_make_outcome = maker(Outcome)
_make_task_outcome = maker(TaskOutcome)


def backoff_delay(retry: int, backoff: float, backoff_max: float, jitter: bool) -> float:
    """Seconds before retry ``retry`` (1-based): ``min(backoff_max, backoff * 2**(retry-1))``,
    times a random factor in [1, 1.25) with jitter, so a burst of failures does not retry in lockstep."""
    delay = min(float(backoff_max), backoff * 2.0 ** (retry - 1))
    return delay * random.uniform(1.0, 1.25) if jitter else delay


def decide(claim: Claim, policy: Policy, ended: Settled) -> Outcome:
    """The outcome to settle for ``claim``, however it ended. A run's end (never a claim that
    did not run) carries the task's breaker, which the broker drives in the same settle."""
    if isinstance(ended, Finished):  # the common end: made without the frozen __init__ (runq/fastinit.py)
        return _make_outcome(
            id=claim.id,
            token=claim.token,
            kind="succeeded",
            result=ended.result,
            result_ttl=policy.result_ttl,
            runtime=ended.duration,
            breaker=policy.breaker,
        )
    if isinstance(ended, Held):
        return Outcome(claim.id, claim.token, "release", delay=ended.delay, uncount=True)
    if isinstance(ended, HandedBack):
        return Outcome(claim.id, claim.token, "release", uncount=not ended.started)
    if isinstance(ended, Refused):
        return Outcome(claim.id, claim.token, "failed", error=ended.error.to_dict())
    error, retryable, delay, runtime = _failure(policy, ended)
    breaker = policy.breaker
    if retryable and claim.attempt <= policy.retries:
        delay = policy.delay(claim.attempt) if delay is None else delay
        return Outcome(
            claim.id, claim.token, "retry", error=error.to_dict(), delay=delay, runtime=runtime, breaker=breaker
        )
    return Outcome(claim.id, claim.token, "failed", error=error.to_dict(), runtime=runtime, breaker=breaker)


def _failure(policy: Policy, ended: Failed | TimedOut | Crashed) -> tuple[Error, bool, float | None, float]:
    """A failed run's error, whether it may be retried, its own retry delay and its runtime."""
    if isinstance(ended, Failed):
        return ended.error, ended.retryable, ended.retry_delay, ended.duration
    if isinstance(ended, TimedOut):
        error = Error(ErrorKind.TIMEOUT, f"task exceeded its timeout of {ended.timeout}s")
        return error, retries_on(policy.retry_for, TimeoutError), None, ended.timeout
    error = Error(ErrorKind.WORKER_CRASHED, f"the child process running the task died (exit code {ended.exit_code})")
    return error, retries_on(policy.retry_for, OSError), None, 0.0


def admit(claim: Claim, policy: Policy) -> Refused | None:
    """Refuse a claim whose every earlier attempt lost its worker: a poison pill (a task that
    kills its worker) must not take the fleet down one worker at a time."""
    if claim.attempt > policy.retries + 1:
        return Refused(Error(ErrorKind.WORKER_LOST, f"gave up after {claim.attempt - 1} lost attempts"))
    return None


def malformed(claim: Claim, reason: str) -> Refused:
    """A payload that is not a runq message: failed at once, its raw text kept."""
    return Refused(Error(ErrorKind.MALFORMED_MESSAGE, reason, raw=claim.payload))


def bad_signature(claim: Claim, reason: str) -> Refused:
    """A message this worker's signing keys do not vouch for: failed at once, never run, its
    raw text kept (runq/signing.py)."""
    return Refused(Error(ErrorKind.BAD_SIGNATURE, reason, raw=claim.payload))


def dependency_failed(reason: str) -> Refused:
    return Refused(Error(ErrorKind.DEPENDENCY_FAILED, reason))


_FINISHED: dict[str, FinishStatus] = {"succeeded": "succeeded", "retry": "retrying", "failed": "failed"}


def task_outcome(outcome: Outcome, wait: float | None) -> TaskOutcome:
    """A settled outcome (not a release) as middleware sees it."""
    return _make_task_outcome(  # every settled task: without the frozen __init__ (runq/fastinit.py)
        status=_FINISHED[outcome.kind],
        result_json=outcome.result,
        error=outcome.error,
        duration=outcome.runtime,
        wait=wait,
        retry_in=outcome.delay if outcome.kind == "retry" else None,
    )
