"""Progress and followers on PostgreSQL (runq/brokers/feed.py).

A task's latest progress is its ``progress`` column (JSON). Following a task sets its
``watched`` column (NULL for a task nobody follows); from then on a trigger numbers each
change of its status or progress in ``watched`` and sends it with ``NOTIFY
<schema>_events`` (schema.sql, migration 3), delivered at commit, in commit order. The
broker's listener (listen.py) pushes each to the feeds of its task (:class:`~runq.brokers.feed.Pushed`).
For a task nobody follows the trigger's ``WHEN`` is false: claim and settle pay nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from psycopg import Cursor

from runq.brokers.feed import Change
from runq.brokers.postgres.flow import NOW
from runq.brokers.postgres.inspect import FIELDS, TASK_COLUMNS
from runq.models import ProgressReport, TaskInfo, change_event, task_info


def report(cur: Cursor[Any], s: str, reports: Sequence[ProgressReport]) -> list[bool]:
    """Store each run's progress while its claim holds the task (fenced by the token), stamped
    with the server's clock."""
    rows = cur.execute(
        f"UPDATE {s}.tasks t SET progress = json_build_object('value', r.value, 'message', r.message,"
        f" 'at', {NOW})::text FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[])"
        " AS r(id, token, value, message) WHERE t.id = r.id AND t.token = r.token AND t.status = 'running'"
        " RETURNING t.id, t.token",
        ([r.id for r in reports], [r.token for r in reports], [r.value for r in reports], [r.message for r in reports]),
    ).fetchall()
    stored = {(row[0], row[1]) for row in rows}
    return [(r.id, r.token) in stored for r in reports]


def read(cur: Cursor[Any], s: str, task_id: str, watch: bool) -> tuple[TaskInfo | None, int]:
    """The task and the number of its changes so far; ``watch``: mark it followed first."""
    if watch:
        row = cur.execute(
            f"UPDATE {s}.tasks SET watched = coalesce(watched, 0) WHERE id = %s"
            f" AND (expires_at IS NULL OR expires_at > {NOW}) RETURNING {TASK_COLUMNS}, watched",
            (task_id,),
        ).fetchone()
    else:
        row = cur.execute(
            f"SELECT {TASK_COLUMNS}, watched FROM {s}.tasks WHERE id = %s"
            f" AND (expires_at IS NULL OR expires_at > {NOW})",
            (task_id,),
        ).fetchone()
    if row is None:
        return None, 0
    return task_info(dict(zip(FIELDS, row, strict=False))), int(row[-1] or 0)


def change_of(payload: str) -> tuple[str, Change | None]:
    """A NOTIFY of the trigger: the task's id and its change (``None``: read the task again,
    the payload had no room for its progress or does not parse)."""
    try:
        data = json.loads(payload)
        task_id = str(data["id"])
    except (ValueError, KeyError, TypeError):
        return "", None
    event = None if data.get("reread") else change_event(data.get("status"), data.get("progress"), data.get("at"))
    version = data.get("v")
    if event is None or not isinstance(version, int):
        return task_id, None
    return task_id, (version, event)
