"""How one claim ended, as the worker saw it: one frozen value per case.

A pool reports every job exactly once, with one of the *run* ends; the worker itself
ends the claims it never hands to a pool with one of the *not run* ends. Nothing else
carries meaning: :func:`runq.worker.policy.decide` turns each into the broker's
:class:`~runq.models.Outcome`, and a :class:`Stopped` run has nothing to settle.

    Ended
    ├── ran         Finished · Failed · TimedOut · Crashed · Stopped
    └── not run     Refused · Held · HandedBack

Run ends cross the process pool's pipe as JSON (:func:`to_frame` / :func:`from_frame`),
never pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias


@dataclass(frozen=True)
class Error:
    """An attempt's error as the task's record keeps it (``TaskInfo.error``)."""

    type: str
    message: str
    traceback: str | None = None
    raw: str | None = None  # a malformed payload's text, kept for inspection

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None or name == "traceback"}


@dataclass(frozen=True)
class Finished:
    """The task returned; ``result`` is its JSON text."""

    result: str
    duration: float = 0.0
    notes: Mapping[str, str] = field(default_factory=dict)  # from run-side middleware (TaskContext.notes)


@dataclass(frozen=True)
class Failed:
    """The task raised. ``retryable`` says whether its task retries this error (its
    ``retry_for``, or ``runq.Retry``), decided where the exception still exists;
    ``retry_delay`` is a ``runq.Retry(delay=...)``'s own delay."""

    error: Error
    retryable: bool
    retry_delay: float | None = None
    duration: float = 0.0
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TimedOut:
    """The task overran its hard ``timeout`` and was stopped (child killed, thread abandoned,
    coroutine cancelled)."""

    timeout: float


@dataclass(frozen=True)
class Crashed:
    """The process-pool child running the task died."""

    exit_code: int | None


@dataclass(frozen=True)
class Stopped:
    """The run was stopped because its claim is gone (cancelled, or taken over after a
    stall): there is nothing to settle."""


@dataclass(frozen=True)
class Refused:
    """Never run: the worker failed the claim before starting it (a malformed payload, a
    task whose every earlier attempt lost its worker, a workflow parent that failed)."""

    error: Error


@dataclass(frozen=True)
class Held:
    """Never run: a circuit breaker or rate limit (or a broker outage) holds the task back
    for ``delay`` seconds; its attempt is given back."""

    delay: float


@dataclass(frozen=True)
class HandedBack:
    """Given back to its queue at shutdown: ``started`` runs keep the attempt they used."""

    started: bool


Ran: TypeAlias = Finished | Failed | TimedOut | Crashed
"""A run that has something to settle."""

Ended: TypeAlias = Finished | Failed | TimedOut | Crashed | Stopped
"""What a pool reports for a job."""

Settled: TypeAlias = Finished | Failed | TimedOut | Crashed | Refused | Held | HandedBack
"""Everything :func:`runq.worker.policy.decide` turns into an outcome."""


def to_frame(ended: Finished | Failed) -> dict[str, Any]:
    """A run end as a JSON-ready frame (what a process-pool child sends back)."""
    if isinstance(ended, Finished):
        return {"finished": ended.result, "duration": ended.duration, "notes": dict(ended.notes)}
    return {
        "failed": ended.error.to_dict(),
        "retryable": ended.retryable,
        "retry_delay": ended.retry_delay,
        "duration": ended.duration,
        "notes": dict(ended.notes),
    }


def from_frame(frame: dict[str, Any]) -> Finished | Failed:
    """The run end a child sent; ``ValueError`` for a frame no child of this version writes."""
    notes = {str(key): str(value) for key, value in (frame.get("notes") or {}).items()}
    if "finished" in frame:
        return Finished(str(frame["finished"]), float(frame["duration"]), notes)
    if "failed" in frame:
        error = Error(**frame["failed"])
        delay = frame.get("retry_delay")
        return Failed(
            error, bool(frame["retryable"]), None if delay is None else float(delay), frame["duration"], notes
        )
    raise ValueError(f"not a run frame: {sorted(frame)}")
