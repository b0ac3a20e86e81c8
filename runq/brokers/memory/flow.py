"""Flow control for the memory broker: dependencies (``after``), expiry, concurrency slots,
debounce, ticks, rate limits, breakers.

The rules are SQLite's (runq/brokers/sqlite/flow.py) on dicts instead of tables, and reuse
its error text and breaker state machine, so every broker cancels, releases and holds alike.
Each function runs under the broker's lock, inside the state change that caused it.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from runq.brokers.base import BreakerEvent
from runq.brokers.memory.tables import Record, Tables
from runq.brokers.rules import (
    EXPIRED,
    EXPIRED_VERB,
    HELD,
    WAIT,
    breaker_step,
    cascade_later,
    dependency_error,
    first_report,
    free_seats,
    link_verdict,
    parent_error,
    parents_in_order,
    passed_on,
)
from runq.models import Message, Status

Later = deque[tuple[str, str, str | None]]  # (child, parent, error): a cascade's steps into other queues


def link(tables: Tables, record: Record, message: Message, now: float) -> None:
    """A task with ``after`` starts waiting; parents already final release or cancel it now
    (rules.py: link_verdict, in the message's dependency mode)."""
    error = None
    for parent in parents_in_order(message.after, record.queue):
        found = tables.tasks.get(parent)
        status = found.status if found is not None and found.visible(now) else None
        verdict = link_verdict(status, message.after_final)
        if verdict is None:
            continue
        if verdict != WAIT:
            error = parent_error(parent, status and status.value, found.error if found else None)
            break
        tables.children.setdefault(parent, {})[record.id] = message.after_final
        tables.parents.setdefault(record.id, {})[parent] = None
    if error is not None:
        unlink(tables, record.id)
        tables.count("cancelled", cancel_waiting(tables, record, error, now))
    elif not tables.parents.get(record.id):
        tables.parents.pop(record.id, None)
        _release(tables, record, now)


def unlink(tables: Tables, child: str) -> None:
    """Forget the parents ``child`` still waits for."""
    for parent in tables.parents.pop(child, {}):
        tables.children.get(parent, {}).pop(child, None)


def release_children(tables: Tables, parent: str, error: str | None, now: float, later: Later | None = None) -> int:
    """``parent`` just ended: release (``error`` None) or cancel its waiting children, in id order;
    a child in the ``after_final`` mode only counts the parent as ended (rules.py: passed_on).

    Cancellation cascades to the children's own dependents (a child reached twice is cancelled by
    whichever path comes first): at once in ``parent``'s queue, and into other queues after, in the
    order reached (``later``), as on every broker (rules.cascade_later). Returns the number cancelled.
    """
    if later is None:
        later = deque()
        cancelled = release_children(tables, parent, error, now, later)
        while later:
            cancelled += _resolve(tables, *later.popleft(), now, later)
        return cancelled
    cancelled = 0
    for child, final in sorted(tables.children.pop(parent, {}).items()):
        cause = passed_on(error, final)
        if cascade_later(parent, child):
            later.append((child, parent, cause))
        else:
            cancelled += _resolve(tables, child, parent, cause, now, later)
    return cancelled


def _resolve(tables: Tables, child: str, parent: str, error: str | None, now: float, later: Later) -> int:
    """One parent of ``child`` ended; the number cancelled."""
    waiting_for = tables.parents.get(child, {})
    waiting_for.pop(parent, None)
    record = tables.tasks.get(child)
    if record is None:
        return 0
    if error is not None:
        return cancel_waiting(tables, record, error, now, later)
    if not waiting_for:
        tables.parents.pop(child, None)
        _release(tables, record, now)
    return 0


def cancel_waiting(tables: Tables, record: Record, error: str, now: float, later: Later | None = None) -> int:
    """Cancel a waiting task because a parent did not succeed, and its dependents after it."""
    if record.status is not Status.WAITING:
        return 0
    record.status, record.error, record.finished_at = Status.CANCELLED, error, now
    record.expires_at = now + record.result_ttl
    tables.place(record)
    unlink(tables, record.id)
    cause = json.loads(error)["message"]
    return 1 + release_children(tables, record.id, dependency_error(record.id, "was cancelled", cause), now, later)


def _release(tables: Tables, record: Record, now: float) -> None:
    """A waiting task whose parents all succeeded: pending, or scheduled until its own eta."""
    if record.status is not Status.WAITING:
        return
    record.status = Status.SCHEDULED if record.ready_at > now else Status.PENDING
    record.ready_at = max(record.ready_at, now)
    tables.place(record)


# -- expiry, concurrency slots, debounce (SPEC §9) -----------------------------------------


def expire(tables: Tables, record: Record, now: float) -> int:
    """A task past its deadline that never started: cancelled (Expired), and its dependents with
    it. Returns the number cancelled."""
    record.status, record.error, record.token, record.lease_until = Status.CANCELLED, EXPIRED, None, None
    record.finished_at, record.expires_at = now, now + record.result_ttl
    tables.place(record)
    unlink(tables, record.id)
    return 1 + release_children(tables, record.id, dependency_error(record.id, EXPIRED_VERB), now)


def expire_due(tables: Tables, queue: str, now: float) -> None:
    while (record := tables.pop_deadline(queue, now)) is not None:
        tables.count("cancelled", expire(tables, record, now))


def hold(tables: Tables, record: Record) -> None:
    """Its slot is full: scheduled without an eta until a seat frees; the claim used no attempt."""
    record.status, record.ready_at = Status.SCHEDULED, HELD
    tables.place(record)


def full(tables: Tables, record: Record) -> bool:
    """Whether the slot of ``record`` (pending, about to be claimed) has its limit of runs."""
    if record.slot is None:
        return False
    return tables.seated(record.queue, record.slot, Status.RUNNING) >= (record.concurrency or 1)


def release_freed(tables: Tables, now: float) -> None:
    """Into every slot a change freed, release held tasks (highest priority, then oldest) for
    the seats its limit leaves beyond its pending and running tasks."""
    while tables.freed:
        (queue, slot), limit = tables.freed.popitem()
        for _ in range(free_seats(limit, tables.seated(queue, slot))):
            record = tables.pop_held(queue, slot)
            if record is None:
                break
            record.status, record.ready_at = Status.PENDING, now
            tables.place(record)


def leave_slot(tables: Tables, record: Record) -> None:
    """Give up the record's seat before its slot changes (a debounce may change its arguments)."""
    if record.slot is None:
        return
    seats = tables.seats.get((record.queue, record.slot), {})
    if any(record.id in ids for ids in seats.values()):
        for ids in seats.values():
            ids.discard(record.id)
        tables.freed[(record.queue, record.slot)] = record.concurrency or 1


def updatable(record: Record | None) -> bool:
    """A debounce may replace a task that has not started: pending or scheduled, no attempt yet."""
    return record is not None and record.status in (Status.PENDING, Status.SCHEDULED) and record.attempts == 0


def debounce(tables: Tables, record: Record, message: Message, payload: str, key_ttl: float, now: float) -> None:
    """Replace a task not started yet by ``message``: its payload and flow fields, its eta now +
    the message's delay (its debounce), and a renewed hold on its key."""
    leave_slot(tables, record)
    record.name, record.payload, record.priority, record.result_ttl = (
        message.name,
        payload,
        message.priority,
        message.result_ttl,
    )
    record.deadline = None if message.expires is None else now + message.expires
    record.slot, record.concurrency = message.slot, message.concurrency
    record.status, record.ready_at, record.key_expires_at = Status.SCHEDULED, now + message.delay, now + key_ttl
    tables.place(record)


def take_tick(tables: Tables, name: str, tick: str, ttl: float, now: float) -> bool:
    for held, expires_at in list(tables.ticks.items()):
        if expires_at < now:
            del tables.ticks[held]
    if (name, tick) in tables.ticks:
        return False
    tables.ticks[(name, tick)] = now + ttl
    return True


def acquire_rate(tables: Tables, name: str, rate: float, per: float, now: float) -> float:
    """GCRA without burst, as the SQLite broker's flow.acquire_rate: runs start at least ``per / rate``
    apart, and a caller told to wait gets the slot after the last one handed out."""
    interval = per / rate
    tat, tail = tables.rates.get(name, (now, now))
    if tat <= now:
        tat, wait = now + interval, 0.0
    else:
        slot = max(tail, tat)
        tail, wait = slot + interval, slot - now
    tables.rates[name] = (tat, tail)
    return wait


def breaker(
    tables: Tables, name: str, event: BreakerEvent, failures: int, seconds: float, now: float, token: str = ""
) -> float:
    """One event on a breaker; ``token``: the claim whose run it reports (rules.first_report)."""
    found = tables.breakers.get(name)
    state: dict[str, Any] = (
        dict(found) if found else {"state": "closed", "failures": 0, "open_until": 0.0, "probe_until": 0.0}
    )
    if not first_report(state, token):
        return 0.0
    hold = breaker_step(state, event, failures, seconds, now)
    if found or state["state"] != "closed" or state["failures"]:
        tables.breakers[name] = state
    return hold


def breaker_states(tables: Tables) -> dict[str, dict[str, Any]]:
    shown = ("state", "failures", "open_until")
    return {name: {k: state[k] for k in shown} for name, state in sorted(tables.breakers.items())}
