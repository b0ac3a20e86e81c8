"""Flow control for the PostgreSQL broker: dependencies (``after``), ticks, rate limits, breakers.

Each function runs inside the caller's transaction, so a parent's outcome and the release
(or cancellation) of everything that waited on it commit together, whatever queue the
dependents are in. The rules are those of ``rules.py`` (and the Redis scripts); the
breaker's state machine is shared with it. What Postgres adds is row locks, because
transactions run side by side:

- a child is locked (``FOR UPDATE``) before its remaining parents are counted, so two
  parents settling at once cannot both see the other still pending and leave it waiting;
- a child linking to its parents holds a shared advisory lock on each, and a task that
  ends takes its own exclusively before it releases its children (``lock_parents``), so
  a parent ending at that moment either is seen final or sees the new link. (A row lock
  would do the same but keep a pending parent from being claimed meanwhile.)

``s`` is the schema, already quoted. ``Notes`` collects what to ``NOTIFY`` at commit.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from psycopg import Cursor

from runq.brokers.base import BreakerEvent
from runq.brokers.rules import (
    WAIT,
    breaker_step,
    cascade_later,
    dependency_error,
    first_report,
    link_verdict,
    parent_error,
    parents_in_order,
    passed_on,
)
from runq.models import Message

Later = deque[tuple[str, str, str | None]]  # (child, parent, error): a cascade's steps into other queues

# The broker's one clock: the server's, one instant per transaction (as SQLite and memory:// date
# every change of one call alike: tasks a settle makes ready together tie, and queue in enqueue
# order). Enqueued inside an app's transaction (PostgresBroker.using), tasks are dated at its start.
NOW = "extract(epoch FROM transaction_timestamp())::float8"


@dataclass
class Notes:
    """Queues that may have new work, and tasks that became final, in this transaction."""

    work: set[str] = field(default_factory=set)
    done: list[str] = field(default_factory=list)
    cancelled: int = 0
    freed: dict[tuple[str, str], int] = field(default_factory=dict)  # concurrency slots to release (limits.py)


def lock_parents(cur: Cursor[Any], ids: list[str], shared: bool = False) -> None:
    """Advisory locks on task ids, in one order. A task that ends takes its own exclusively
    before releasing its children; ``link`` takes its parents' shared, so a child linking
    to a task that ends right now is either seen by that release or sees the task final."""
    cur.execute(
        f"SELECT pg_advisory_xact_lock{'_shared' if shared else ''}(k) FROM (SELECT DISTINCT"
        " hashtextextended(i, 0) AS k FROM unnest(%s::text[]) AS i ORDER BY 1) AS l",
        (ids,),
    )


def link(cur: Cursor[Any], s: str, message: Message) -> str | None:
    """Record the parents of a just-inserted waiting task; the error that cancels it, if any."""
    parents = parents_in_order(message.after, message.queue)
    lock_parents(cur, parents, shared=True)
    for parent in parents:
        row = cur.execute(
            f"SELECT status, error FROM {s}.tasks WHERE id = %s AND (expires_at IS NULL OR expires_at > {NOW})",
            (parent,),
        ).fetchone()
        verdict = link_verdict(row[0] if row else None, message.after_final)
        if verdict is None:
            continue
        if verdict != WAIT:
            return parent_error(parent, row[0] if row else None, row[1] if row else None)
        cur.execute(
            f"INSERT INTO {s}.deps (parent, child, final) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (parent, message.id, message.after_final),
        )
    return None


def wait_for_parents(cur: Cursor[Any], s: str, message: Message, notes: Notes) -> None:
    """A task with ``after`` starts waiting; parents already final release or cancel it now."""
    error = link(cur, s, message)
    if error is not None:
        cur.execute(f"DELETE FROM {s}.deps WHERE child = %s", (message.id,))
        cancel_waiting(cur, s, message.id, error, notes)
    elif cur.execute(f"SELECT 1 FROM {s}.deps WHERE child = %s LIMIT 1", (message.id,)).fetchone() is None:
        _release(cur, s, message.id, notes)


def _release(cur: Cursor[Any], s: str, child: str, notes: Notes) -> None:
    row = cur.execute(
        f"UPDATE {s}.tasks SET status = CASE WHEN ready_at > {NOW} THEN 'scheduled' ELSE 'pending' END,"
        f" ready_at = greatest(ready_at, {NOW}) WHERE id = %s AND status = 'waiting' RETURNING queue",
        (child,),
    ).fetchone()
    if row is not None:
        notes.work.add(row[0])


def release_children(
    cur: Cursor[Any], s: str, parent: str, error: str | None, notes: Notes, later: Later | None = None
) -> None:
    """``parent`` just ended: release (``error`` None) or cancel its waiting children, in id order;
    a child in the ``after_final`` mode only counts the parent as ended (rules.py: passed_on).

    Cancellation cascades to the children's own dependents: at once in ``parent``'s queue, and
    into other queues after, in the order reached (``later``: rules.cascade_later);
    ``notes.cancelled`` counts them.
    """
    children = sorted(cur.execute(f"DELETE FROM {s}.deps WHERE parent = %s RETURNING child, final", (parent,)))
    _cascade(cur, s, parent, children, error, notes, later)


def release_ended(cur: Cursor[Any], s: str, ended: list[tuple[str, str | None]], notes: Notes) -> None:
    """Many parents just ended (a settle): :func:`release_children` for each, with one
    ``DELETE`` for all of them, so a batch of tasks without dependents costs one statement."""
    rows = cur.execute(
        f"DELETE FROM {s}.deps WHERE parent = ANY(%s) RETURNING parent, child, final", ([p for p, _ in ended],)
    ).fetchall()
    children: dict[str, list[tuple[str, bool]]] = {}
    for parent, child, final in rows:
        children.setdefault(parent, []).append((child, final))
    # Failed parents first: with every edge already deleted, a child whose other parent just
    # succeeded would otherwise look free and be released before the failure cancels it.
    # (An after_final child is released by whichever comes first: both count as ended.)
    for parent, error in sorted(ended, key=lambda e: e[1] is None):
        if parent in children:
            _cascade(cur, s, parent, sorted(children[parent]), error, notes, None)


def _cascade(
    cur: Cursor[Any],
    s: str,
    parent: str,
    children: list[tuple[str, bool]],
    error: str | None,
    notes: Notes,
    later: Later | None,
) -> None:
    """Resolve ``parent``'s children (their edges are gone already); those in other queues last."""
    if later is None:
        later = deque()
        _cascade(cur, s, parent, children, error, notes, later)
        while later:
            child, _, cause = later.popleft()
            _resolve(cur, s, child, cause, notes, later)
        return
    for child, final in children:
        cause = passed_on(error, final)
        if cascade_later(parent, child):
            later.append((child, parent, cause))
        else:
            _resolve(cur, s, child, cause, notes, later)


def _resolve(cur: Cursor[Any], s: str, child: str, error: str | None, notes: Notes, later: Later) -> None:
    if error is not None:
        cancel_waiting(cur, s, child, error, notes, later)
        return
    cur.execute(f"SELECT 1 FROM {s}.tasks WHERE id = %s FOR UPDATE", (child,))
    if cur.execute(f"SELECT 1 FROM {s}.deps WHERE child = %s LIMIT 1", (child,)).fetchone() is None:
        _release(cur, s, child, notes)


def cancel_waiting(cur: Cursor[Any], s: str, child: str, error: str, notes: Notes, later: Later | None = None) -> None:
    """Cancel a waiting task because a parent did not succeed, and its dependents after it."""
    row = cur.execute(
        f"UPDATE {s}.tasks SET status = 'cancelled', error = %s, finished_at = {NOW},"
        f" expires_at = {NOW} + result_ttl WHERE id = %s AND status = 'waiting' RETURNING id",
        (error, child),
    ).fetchone()
    if row is None:
        return
    notes.cancelled += 1
    notes.done.append(child)
    cur.execute(f"DELETE FROM {s}.deps WHERE child = %s", (child,))
    lock_parents(cur, [child])
    cause = json.loads(error)["message"]
    release_children(cur, s, child, dependency_error(child, "was cancelled", cause), notes, later)


def take_tick(cur: Cursor[Any], s: str, name: str, tick: str, ttl: float) -> bool:
    cur.execute(f"DELETE FROM {s}.ticks WHERE expires_at < {NOW}")
    row = cur.execute(
        f"INSERT INTO {s}.ticks (name, tick, expires_at) VALUES (%s, %s, {NOW} + %s)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        (name, tick, ttl),
    ).fetchone()
    return row is not None


def acquire_rate(cur: Cursor[Any], s: str, name: str, rate: float, per: float) -> float:
    """GCRA without burst, as the SQLite broker's ``flow.acquire_rate``; the bucket's row is locked."""
    interval = per / rate
    cur.execute(f"INSERT INTO {s}.rates (name, tat, tail) VALUES (%s, {NOW}, {NOW}) ON CONFLICT DO NOTHING", (name,))
    row = cur.execute(f"SELECT tat, tail, {NOW} FROM {s}.rates WHERE name = %s FOR UPDATE", (name,)).fetchone()
    assert row is not None
    tat, tail, now = row
    if tat <= now:
        tat, wait = now + interval, 0.0
    else:
        slot = max(tail, tat)
        tail, wait = slot + interval, slot - now
    cur.execute(f"UPDATE {s}.rates SET tat = %s, tail = %s WHERE name = %s", (tat, tail, name))
    return float(wait)


def breaker(
    cur: Cursor[Any], s: str, name: str, event: BreakerEvent, failures: int, seconds: float, token: str = ""
) -> float:
    """One event on a breaker; ``token``: the claim whose run it reports (rules.first_report)."""
    fields = ("state", "failures", "open_until", "probe_until", "seen")
    columns = ", ".join(fields)
    row = cur.execute(f"SELECT {columns}, {NOW} FROM {s}.breakers WHERE name = %s FOR UPDATE", (name,)).fetchone()
    if row is None:
        now = cur.execute(f"SELECT {NOW}").fetchone()[0]  # type: ignore[index]
        state: dict[str, Any] = {"state": "closed", "failures": 0, "open_until": 0.0, "probe_until": 0.0, "seen": ""}
    else:
        state = dict(zip(fields, row[:5], strict=False))
        now = row[5]
    if not first_report(state, token):
        return 0.0
    hold = breaker_step(state, event, failures, seconds, now)
    if row is not None or state["state"] != "closed" or state["failures"]:
        cur.execute(
            f"INSERT INTO {s}.breakers (name, {columns}) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name)"
            " DO UPDATE SET state = excluded.state, failures = excluded.failures, open_until = excluded.open_until,"
            " probe_until = excluded.probe_until, seen = excluded.seen",
            (name, *(state[field] for field in fields)),
        )
    return hold


def breaker_states(cur: Cursor[Any], s: str) -> dict[str, dict[str, Any]]:
    rows = cur.execute(f"SELECT name, state, failures, open_until FROM {s}.breakers ORDER BY name").fetchall()
    return {row[0]: {"state": row[1], "failures": row[2], "open_until": row[3]} for row in rows}


def repeats(cur: Cursor[Any], s: str, claims: list[tuple[str, str]]) -> set[str]:
    """The ids among ``(id, token)`` settled already by that very claim (its token stays on the
    task). A settle whose reply was lost (the connection broke after the commit) runs again: it
    must read as applied, not as a late outcome "cancelled or taken over". A task past its
    result_ttl is gone, deleted or not yet."""
    if not claims:
        return set()
    rows = cur.execute(
        f"SELECT t.id FROM {s}.tasks t JOIN unnest(%s::text[], %s::text[]) AS m(id, token)"
        f" ON t.id = m.id AND t.token = m.token WHERE t.status <> 'running'"
        f" AND (t.expires_at IS NULL OR t.expires_at > {NOW})",
        ([task_id for task_id, _ in claims], [token for _, token in claims]),
    ).fetchall()
    return {row[0] for row in rows}
