"""Enqueueing on the PostgreSQL broker: the one ``INSERT`` of a batch, and a message with an
idempotency key, parents or a debounce, each in the caller's transaction (``s`` is the
schema, already quoted)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import Cursor

from runq.brokers.postgres import flow, limits
from runq.brokers.postgres.flow import NOW, Notes
from runq.models import Message

_TYPES = ("text", "text", "text", "int", "float8", "text", "text", "float8", "bool")
_FLOW_TYPES = ("float8", "text", "int")
_MANY = " FROM unnest({columns}) WITH ORDINALITY"  # one array per column, in order
_ONE = " FROM (VALUES ({columns}, 1))"


def _source(one: bool, flowing: bool) -> str:
    """The rows to insert: one per message, each with its columns of :data:`_TYPES` and its ``ord``."""
    types = _TYPES + (_FLOW_TYPES if flowing else ())
    return (_ONE if one else _MANY).format(columns=", ".join(f"%s::{t}" + ("" if one else "[]") for t in types))


def insert(cur: Cursor[Any], s: str, messages: Sequence[Message], key_ttl: float, wake: str | None = None) -> list[Any]:
    """Insert in one statement, in order (``seq`` is the FIFO tie-break); the ids inserted.

    With ``wake`` (the work channel) the same statement also counts the inserted tasks and
    notifies their queues, so a plain ``delay()`` is one statement and one round trip.
    """
    columns: list[list[Any]] = [
        [m.id for m in messages],
        [m.queue for m in messages],
        [m.name for m in messages],
        [m.priority for m in messages],
        [float(m.delay) for m in messages],
        [m.payload for m in messages],
        [m.key for m in messages],
        [float(m.result_ttl) for m in messages],
        [bool(m.after) for m in messages],
    ]
    # Flow columns only when a message sets one: a plain enqueue sends what it always did.
    flowing = any(m.expires is not None or m.slot is not None for m in messages)
    if flowing:
        columns += [[m.expires for m in messages], [m.slot for m in messages], [m.concurrency for m in messages]]
    statement = (
        f"INSERT INTO {s}.tasks (id, queue, name, status, priority, ready_at, payload, key,"
        " key_expires_at, result_ttl, enqueued_at" + (", deadline, slot, concurrency)" if flowing else ")") + ""
        " SELECT m.id, m.queue, m.name, CASE WHEN m.waiting THEN 'waiting' WHEN m.delay > 0 THEN 'scheduled'"
        f" ELSE 'pending' END, m.priority, {NOW} + m.delay, m.payload, m.key,"
        f" CASE WHEN m.key IS NULL THEN NULL ELSE {NOW} + %s END, m.result_ttl, {NOW}"
        + (f", {NOW} + m.expires, m.slot, m.concurrency" if flowing else "")
        + _source(len(messages) == 1, flowing)
        + " AS m(id, queue, name, priority, delay, payload, key, result_ttl, waiting"
        + (", expires, slot, concurrency" if flowing else "")
        + ", ord) ORDER BY m.ord ON CONFLICT DO NOTHING RETURNING id, queue"
    )
    one = len(messages) == 1  # one row of plain values: psycopg adapts arrays in Python, slowly
    params = [column[0] for column in columns] if one else columns
    if wake is None:
        return cur.execute(statement, (key_ttl, *params)).fetchall()
    cur.execute(
        f"WITH ins AS ({statement}), counted AS (INSERT INTO {s}.counter_deltas (name, value)"
        " SELECT 'enqueued', count(*) FROM ins HAVING count(*) > 0),"
        " woken AS (SELECT pg_notify(%s, q) FROM (SELECT DISTINCT queue AS q FROM ins) AS w)"
        " SELECT (SELECT count(*) FROM woken)",
        (key_ttl, *params, wake),
    )
    return []


def enqueue_one(cur: Cursor[Any], s: str, message: Message, key_ttl: float, notes: Notes) -> tuple[str, bool]:
    """One message with an idempotency key, parents or a debounce: the id that holds its key, and
    whether this call stored it (not when an earlier try of the same enqueue did)."""
    if message.key is not None:
        row = cur.execute(
            f"SELECT id, key_expires_at > {NOW} AND (expires_at IS NULL OR expires_at > {NOW})"
            f" FROM {s}.tasks WHERE queue = %s AND key = %s FOR UPDATE",
            (message.queue, message.key),
        ).fetchone()
        if row is not None and row[1] and message.debounce is not None:
            if limits.debounce(cur, s, str(row[0]), message, key_ttl, notes.freed):
                return str(row[0]), False
        elif row is not None and row[1]:
            return str(row[0]), False
        if row is not None:  # an expired hold (or one a debounce takes over) goes to the new task
            cur.execute(f"UPDATE {s}.tasks SET key = NULL WHERE id = %s", (row[0],))
    if not insert(cur, s, [message], key_ttl):
        if cur.execute(f"SELECT 1 FROM {s}.tasks WHERE id = %s", (message.id,)).fetchone() is None:
            holder = cur.execute(
                f"SELECT id FROM {s}.tasks WHERE queue = %s AND key = %s", (message.queue, message.key)
            ).fetchone()
            assert holder is not None
            return str(holder[0]), False
        return message.id, False
    if message.after:
        flow.wait_for_parents(cur, s, message, notes)
    else:
        notes.work.add(message.queue)
    return message.id, True
