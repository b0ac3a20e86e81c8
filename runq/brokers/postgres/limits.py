"""Flow control at claim for the PostgreSQL broker (SPEC §9): expiry, concurrency slots,
debounce and paused queues, each in the caller's transaction.

The rules are the SQLite broker's (``sqlite/flow.py``): a *slot* counts its ``pending`` and
``running`` tasks (its seats); a claim holds a task whose slot has its limit of running ones
(``scheduled``, ``ready_at`` infinite, its attempt given back); a task leaving its seat for
another state frees the slot, and :func:`release` makes held tasks pending for the seats
left. What Postgres adds is concurrency between claims: a claim takes its slots' advisory
locks (in one order) before it counts their running tasks, so two claims never both see
a seat free; the lock is the transaction's, so the second one counts after the first commits.

``s`` is the schema, already quoted. ``Freed`` maps ``(queue, slot)`` to its limit.
"""

from __future__ import annotations

from typing import Any

from psycopg import Cursor

from runq.brokers.postgres import flow
from runq.brokers.postgres.flow import NOW, Notes
from runq.brokers.rules import EXPIRED, EXPIRED_VERB, HELD, dependency_error
from runq.models import Message

Freed = dict[tuple[str, str], int]
EXPIRE_BATCH = 1000  # tasks past their deadline cancelled per claim, at most
HOLD_ROUNDS = 4  # picks per queue and claim while held tasks keep a claim short


def expire_due(cur: Cursor[Any], s: str, queues: list[str], notes: Notes, freed: Freed) -> None:
    """Cancel (Expired) the pending and scheduled tasks of ``queues`` past their deadline, and
    their dependents."""
    rows = cur.execute(
        f"UPDATE {s}.tasks t SET status = 'cancelled', error = %s, token = NULL, lease_until = NULL,"
        f" finished_at = {NOW}, expires_at = {NOW} + t.result_ttl FROM (SELECT seq, status AS was FROM {s}.tasks"
        f" WHERE queue = ANY(%s) AND deadline <= {NOW} AND deadline IS NOT NULL"
        " AND status IN ('pending', 'scheduled') LIMIT %s FOR UPDATE SKIP LOCKED) e"
        " WHERE t.seq = e.seq RETURNING t.id, t.queue, t.slot, t.concurrency, e.was",
        (EXPIRED, queues, EXPIRE_BATCH),
    ).fetchall()
    if not rows:
        return
    ids = sorted(row[0] for row in rows)
    flow.lock_parents(cur, ids)
    for task_id, queue, slot, limit, was in rows:
        notes.cancelled += 1
        notes.done.append(task_id)
        if slot is not None and was == "pending":
            freed[(queue, slot)] = limit or 1
    for task_id in ids:
        flow.release_children(cur, s, task_id, dependency_error(task_id, EXPIRED_VERB), notes)


def pick(cur: Cursor[Any], s: str, queue: str, want: int, lease: float, worker: str) -> list[tuple[Any, ...]]:
    """Claim up to ``want`` pending tasks of ``queue`` (none while it is paused; none past its
    deadline: those wait for :func:`expire_due`), in claim order."""
    rows = cur.execute(
        f"WITH picked AS (SELECT seq, worker AS was, token AS was_token, started_at AS was_started FROM {s}.tasks"
        " WHERE status = 'pending' AND queue = %s"
        f" AND (deadline IS NULL OR deadline > {NOW}) AND NOT EXISTS (SELECT 1 FROM {s}.paused WHERE queue = %s)"
        " ORDER BY priority DESC, ready_at, seq LIMIT %s FOR UPDATE SKIP LOCKED)"
        f" UPDATE {s}.tasks t SET status = 'running', attempts = t.attempts + 1,"
        f" token = replace(gen_random_uuid()::text, '-', ''), lease_until = {NOW} + %s, worker = %s,"
        f" started_at = {NOW} FROM picked WHERE t.seq = picked.seq"
        " RETURNING t.id, t.payload, t.attempts, t.token, t.priority, t.ready_at, t.seq, t.slot, t.concurrency,"
        " picked.was, picked.was_token, picked.was_started",
        (queue, queue, want, lease, worker),
    ).fetchall()
    rows.sort(key=lambda r: (-r[4], r[5], r[6]))
    return rows


def hold_excess(
    cur: Cursor[Any], s: str, queue: str, rows: list[tuple[Any, ...]], wait: bool = True
) -> set[str] | None:
    """Of the tasks just claimed, those whose slot now has more runs than its limit go back as
    held (the latest in claim order first); their ids. Slots are locked first, in one order.

    ``wait=False``: the transaction holds slot locks already (a claim's later round or queue), and
    waiting for more could close a cycle with one that holds these and waits for ours (a settle
    takes its slots in one order, but after ours). Then a slot busy elsewhere gives every task of
    ``rows`` back (pending again, its attempt returned) and the answer is None."""
    slots = sorted({row[7] for row in rows if row[7] is not None})
    if not slots:
        return set()
    if not lock_slots(cur, [(queue, slot) for slot in slots], wait):
        cur.execute(
            f"UPDATE {s}.tasks SET status = 'pending', attempts = attempts - 1, token = NULL, lease_until = NULL,"
            " started_at = NULL WHERE seq = ANY(%s)",
            ([row[6] for row in rows],),
        )
        return None
    counts = dict(
        cur.execute(
            f"SELECT slot, count(*) FROM {s}.tasks WHERE queue = %s AND slot = ANY(%s) AND slot IS NOT NULL"
            " AND status IN ('pending', 'running') AND status = 'running' GROUP BY slot",
            (queue, slots),
        ).fetchall()
    )
    held: list[tuple[Any, ...]] = []  # seq, and worker, token, started_at before this claim
    ids: set[str] = set()
    for row in reversed(rows):  # the last claimed give their seats back first
        slot, limit = row[7], row[8] or 1
        if slot is not None and counts.get(slot, 0) > limit:
            counts[slot] -= 1
            held.append((row[6], *row[9:12]))
            ids.add(row[0])
    if held:  # as if never taken: what it was before this claim (a settle sent again is still known)
        cur.execute(
            f"UPDATE {s}.tasks t SET status = 'scheduled', ready_at = %s, attempts = attempts - 1, lease_until = NULL,"
            " worker = h.worker, token = h.token, started_at = h.started_at"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::float8[]) AS h(seq, worker, token, started_at)"
            " WHERE t.seq = h.seq",
            (HELD, *(list(column) for column in zip(*held, strict=True))),
        )
    return ids


def lock_slots(cur: Cursor[Any], slots: list[tuple[str, str]], wait: bool = True) -> bool:
    """The transaction's advisory locks on ``(queue, slot)`` pairs, in one order. A claim counts
    a slot's runs and a release its seats only under its lock, so neither misses the other's
    change: a task held by a claim not yet committed is released once that claim commits.
    ``wait=False`` takes only the locks free now: False when one was not."""
    keys = (
        "FROM (SELECT DISTINCT hashtextextended(q || chr(31) || x, 1) AS k"
        " FROM unnest(%s::text[], %s::text[]) AS l(q, x) ORDER BY 1) AS l"
    )
    pairs = ([queue for queue, _ in slots], [slot for _, slot in slots])
    if wait:
        cur.execute(f"SELECT pg_advisory_xact_lock(k) {keys}", pairs)
        return True
    row = cur.execute(f"SELECT bool_and(pg_try_advisory_xact_lock(k)) {keys}", pairs).fetchone()
    return bool(row and row[0])


def release(cur: Cursor[Any], s: str, freed: Freed, notes: Notes) -> None:
    """Into every freed slot, release held tasks (highest priority, then oldest) for the seats
    its limit leaves beyond its pending and running tasks; one statement for them all."""
    if not freed:
        return
    items = sorted(freed.items())
    lock_slots(cur, [pair for pair, _ in items])
    rows = cur.execute(
        f"UPDATE {s}.tasks t SET status = 'pending', ready_at = {NOW} FROM (SELECT h.seq FROM"
        " unnest(%s::text[], %s::text[], %s::int[]) AS f(queue, slot, lim), LATERAL (SELECT seq"
        f" FROM {s}.tasks WHERE queue = f.queue AND slot = f.slot AND status = 'scheduled' AND ready_at = %s"
        " ORDER BY priority DESC, seq LIMIT greatest(0, f.lim - (SELECT count(*) FROM"
        f" {s}.tasks x WHERE x.queue = f.queue AND x.slot = f.slot AND x.slot IS NOT NULL"
        " AND x.status IN ('pending', 'running'))) FOR UPDATE SKIP LOCKED) h) r"
        " WHERE t.seq = r.seq RETURNING t.queue",
        ([q for (q, _), _ in items], [slot for (_, slot), _ in items], [n for _, n in items], HELD),
    ).fetchall()
    notes.work.update(row[0] for row in rows)
    freed.clear()


def debounce(cur: Cursor[Any], s: str, holder: str, message: Message, key_ttl: float, freed: Freed) -> bool:
    """Replace ``holder`` (locked by the caller) if it has not started: pending or scheduled, no
    attempt yet. Its eta becomes now + the message's delay (its debounce)."""
    row = cur.execute(
        f"SELECT queue, slot, concurrency, status FROM {s}.tasks WHERE id = %s"
        " AND status IN ('pending', 'scheduled') AND attempts = 0",
        (holder,),
    ).fetchone()
    if row is None:
        return False
    if row[1] is not None and row[3] == "pending":
        freed[(row[0], row[1])] = row[2] or 1
    cur.execute(
        f"UPDATE {s}.tasks SET name = %s, payload = %s, priority = %s, result_ttl = %s, status = 'scheduled',"
        f" ready_at = {NOW} + %s, key_expires_at = {NOW} + %s, deadline = {NOW} + %s, slot = %s, concurrency = %s"
        " WHERE id = %s",
        (
            message.name,
            message.payload,
            message.priority,
            message.result_ttl,
            float(message.delay),
            key_ttl,
            message.expires,
            message.slot,
            message.concurrency,
            holder,
        ),
    )
    return True


def pause(cur: Cursor[Any], s: str, queue: str, on: bool) -> bool:
    if on:
        sql = f"INSERT INTO {s}.paused (queue) VALUES (%s) ON CONFLICT DO NOTHING RETURNING 1"
    else:
        sql = f"DELETE FROM {s}.paused WHERE queue = %s RETURNING 1"
    return cur.execute(sql, (queue,)).fetchone() is not None


def paused(cur: Cursor[Any], s: str) -> set[str]:
    return {row[0] for row in cur.execute(f"SELECT queue FROM {s}.paused").fetchall()}
