"""Rules every broker applies the same way, whatever its storage: written once here (the
Redis scripts follow the same rules in Lua; the conformance suites hold them all to it)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from runq.brokers.base import BreakerEvent
from runq.errors import ErrorKind
from runq.models import Outcome, queue_of

PROBE_POLL = 1.0  # longest hold while a half-open breaker's probe runs
HELD = math.inf  # the ready_at of a task held by its concurrency limit: it waits for a slot, not a time
EXPIRED = json.dumps({"type": ErrorKind.EXPIRED.value, "message": "expired before it started"})
CANCELLED = json.dumps({"type": ErrorKind.CANCELLED.value, "message": "cancelled"})  # a cancel() call's
EXPIRED_VERB = "expired"  # dependents of an expired task: "parent task <id> expired"


def breaker_event(outcome: Outcome) -> BreakerEvent | None:
    """What an outcome tells its task's breaker, if it has one: a run's end only."""
    if outcome.breaker is None or outcome.kind == "release":
        return None
    return "success" if outcome.kind == "succeeded" else "failure"


def renews(lease_until: float, now: float, lease: float) -> bool:
    """Whether ``renew`` writes a held claim's lease (``now + lease``): only once less than half
    of it is left, so a busy worker's keeper rarely writes (SQLite: rarely takes the write lock).
    A renewed claim has at least ``lease / 2`` left; a longer lease is never shortened. (The
    Lua of renew.lua and the SQL of PostgreSQL's renew say the same.)"""
    return lease_until - now < lease / 2


def free_seats(limit: int, seated: int) -> int:
    """Held tasks to release into a slot: what its limit leaves beyond its pending and running ones."""
    return max(0, limit - seated)


# The error an expired lease leaves on its task (JSON text); the Redis scripts get this same
# text from keys.py's generated prologue, so every broker records the same thing.
WORKER_LOST = json.dumps(
    {"type": ErrorKind.WORKER_LOST.value, "message": "lease expired: the worker died or stalled"},
    separators=(",", ":"),
)


# -- dependencies (``after``): two modes -------------------------------------------------------
# A dependent waits for its parents in one of two modes, kept with each of its links:
# - ``after`` (the default): released when its last parent succeeds; cancelled, with its own
#   dependents, as soon as one fails, is cancelled or is gone;
# - ``after_final`` (Message.after_final, a batch's summary step): released when its last parent
#   is final, whatever the outcome (a parent gone counts as ended); never cancelled by a parent.
# The Redis scripts follow the same two rules (lib.lua: verdict, resolve).

WAIT = "wait"  # link_verdict: the parent is not final yet


def link_verdict(status: str | None, final: bool) -> str | None:
    """What a parent's status means for a dependent linked to it now (``status`` ``None``: gone,
    unknown or past its ``result_ttl``): ``None``, nothing to wait for; :data:`WAIT`; or the verb
    of the :func:`dependency_error` that cancels the dependent at once."""
    status = None if status is None else str(status)  # a models.Status too (its hash is not its value's)
    if status in ("pending", "scheduled", "waiting", "running"):
        return WAIT
    if final or status == "succeeded":
        return None
    return {None: "not found", "failed": "failed"}.get(status, "was cancelled")


def passed_on(error: str | None, final: bool) -> str | None:
    """The error a parent's end passes to a dependent: ``None`` (one parent fewer to wait for)
    when the parent succeeded, or always in the ``after_final`` mode; else the error that
    cancels the dependent."""
    return None if final else error


def dependency_error(parent: str, verb: str, cause: str | None = None) -> str:
    """The error of a task cancelled because ``parent`` did not succeed (JSON text)."""
    message = f"parent task {parent} {verb}" + (f" ({cause})" if cause else "")
    return json.dumps({"type": ErrorKind.DEPENDENCY_FAILED.value, "message": message, "parent": parent})


SEEN = 32  # a breaker remembers the claims of its last 32 reports (breaker.lua too)


def first_report(state: dict[str, Any], token: str) -> bool:
    """Whether the report of the run of claim ``token`` is new to its breaker, which then
    remembers it (``state["seen"]``: the last :data:`SEEN` tokens, newest first, space-separated).
    A settle sent again, after its reply was lost or its claim was taken over, counts once: on
    Redis the breaker hears it in the settle's round trip, unable to wait for the settle's
    answer, so every broker counts by token alike. An empty token (``breaker()``) is always new."""
    if not token:
        return True
    seen = str(state.get("seen") or "").split()
    if token in seen:
        return False
    state["seen"] = " ".join([token, *seen][:SEEN])
    return True


def cascade_later(parent: str, child: str) -> bool:
    """Whether ending ``parent`` resolves ``child`` after the rest of its cascade: a child in another
    queue is resolved once every child (and theirs) in the parent's own queue is, in the order reached.
    (Redis must: its step for another queue's slot is a second call, runq/brokers/redis/outbox.py;
    every broker does the same, so a task waiting on several parents ended in one cascade names
    the same one.)"""
    return queue_of(child) != queue_of(parent)


def parents_in_order(after: tuple[str, ...], queue: str) -> list[str]:
    """A task's parents in the order they are checked when it is enqueued, each once: those of its
    own ``queue`` first, then the others, each in ``after`` order. Of several parents already
    ended badly, the first so named is the one its error names (Redis decides its own queue's
    parents at enqueue and the others' in a second call)."""
    unique = list(dict.fromkeys(after))
    return [p for p in unique if queue_of(p) == queue] + [p for p in unique if queue_of(p) != queue]


def parent_error(parent: str, status: str | None, error: str | None) -> str | None:
    """The error of a task whose ``parent`` ended badly (``status`` None: gone), in the words its
    end gave the tasks waiting on it then ("failed", "expired", "was cancelled" with the cause
    when it was itself cancelled as a dependent): the same whenever the task comes, before or
    after its parent ended. ``None`` for a parent that has not ended badly."""
    if status is None:
        return dependency_error(parent, "not found")
    if status == "failed":
        return dependency_error(parent, "failed")
    if status != "cancelled":
        return None
    try:
        ended = json.loads(error or "{}")
    except ValueError:
        ended = {}
    kind = ended.get("type") if isinstance(ended, dict) else None
    if kind == ErrorKind.EXPIRED.value:
        return dependency_error(parent, EXPIRED_VERB)
    if kind == ErrorKind.DEPENDENCY_FAILED.value:
        return dependency_error(parent, "was cancelled", str(ended.get("message")))
    return dependency_error(parent, "was cancelled")


def breaker_step(state: dict[str, Any], event: BreakerEvent, failures: int, seconds: float, now: float) -> float:
    """One event on a breaker's state (changed in place); the seconds to hold a run."""
    if event == "success":
        state.update(state="closed", failures=0)
        return 0.0
    if event == "failure":
        state["failures"] += 1
        if state["state"] == "half_open" or state["failures"] >= failures:
            state.update(state="open", open_until=now + seconds)
        return 0.0
    if state["state"] == "open":
        if now < state["open_until"]:
            return float(state["open_until"] - now)
        state.update(state="half_open", probe_until=now + seconds)
        return 0.0
    if state["state"] == "half_open":
        if now < state["probe_until"]:
            return float(min(PROBE_POLL, state["probe_until"] - now))
        state["probe_until"] = now + seconds
    return 0.0


# -- per-task metrics: the stored form every broker keeps (runq/observe/task_metrics.py) --


def metric_rows(deltas: Mapping[str, Mapping[str, float]]) -> list[tuple[str, str, float]]:
    """``(queue, field, amount)`` in one fixed order, so concurrent flushes take row locks in
    the same order (no deadlock between two workers' upserts on PostgreSQL)."""
    return sorted((queue, name, float(amount)) for queue, series in deltas.items() for name, amount in series.items())


def metric_totals(found: list[tuple[str, str, float]]) -> dict[str, dict[str, float]]:
    result: dict[str, dict[str, float]] = {}
    for queue, name, value in found:
        result.setdefault(queue, {})[name] = float(value)
    return result
