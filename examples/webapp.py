"""The web-app cookbook (README "Cookbook: a web app"): Celery's FastAPI flow, on runq.

Three queues with their own workers, a JSON API that submits tasks by name with a priority
and a payload, polls or streams their status, and shows queue depths and workers live; the
runq admin API (cancel, retry, purge, live snapshots) mounted behind a token.

Run it (four terminals, same RUNQ_URL; the SQLite default works on one machine)::

    cd examples
    runq worker webapp:queue --queues high --pool thread --concurrency 8
    runq worker webapp:queue --queues default --pool thread --concurrency 4
    runq worker webapp:queue --queues low --pool async --concurrency 1
    RUNQ_DASHBOARD_TOKEN=s3cret uvicorn webapp:api

    curl -s localhost:8000/tasks -H 'content-type: application/json' \\
         -d '{"name": "charge", "payload": {"order": "o-1", "cents": 1250}, "priority": 9}'
    curl -s localhost:8000/tasks/<id>               # poll
    curl -sN localhost:8000/tasks/<id>/events       # or stream, until it ends
    curl -s localhost:8000/queues; curl -s localhost:8000/workers
    curl -s localhost:8000/admin/api/stats -H 'authorization: Bearer s3cret'

Every runq call is the asyncio one (``aenqueue``, ``ainfo``, ``aresult``, ``astats``,
``aworkers``, ``alist``), so no request blocks the event loop on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

import runq
from runq.dashboard import api_app

queue = runq.App()  # RUNQ_URL, else sqlite:///runq.db in the current directory


# -- tasks: each on its queue, served by workers of its own ------------------------------------


@queue.task(name="charge", queue="high", retries=5, backoff=1.0)
def charge(order: str, cents: int) -> dict[str, Any]:
    """Money first: a queue whose workers are never busy with reports."""
    return {"order": order, "charged": cents}


@queue.task(name="send_email")
def send_email(to: str, subject: str = "") -> str:
    return f"sent {subject!r} to {to}"


@queue.task(name="build_report", queue="low", timeout=600)
async def build_report(rows: int, seconds_per_row: float = 0.01) -> dict[str, int]:
    """Slow and unimportant: one at a time, on the low queue's own worker."""
    total = 0
    for row in range(rows):
        await asyncio.sleep(seconds_per_row)
        total += row
    return {"rows": rows, "total": total}


PUBLIC = frozenset({"charge", "send_email", "build_report"})  # what a client may submit by name


# -- the web app ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await queue.aclose()  # this loop's broker connections, then the broker


api = FastAPI(title="runq cookbook: a web app", lifespan=lifespan)

# The admin API (runq dashboard's /api: cancel, retry, purge, /admin/api/events live
# snapshots) for operators, behind a token; never open, never steerable by another site.
if token := os.environ.get("RUNQ_DASHBOARD_TOKEN"):
    api.mount("/admin", api_app(queue, token=token))


class Submit(BaseModel):
    name: str = Field(examples=["charge"])
    payload: dict[str, Any] = Field(default_factory=dict, examples=[{"order": "o-1", "cents": 1250}])
    priority: int = Field(default=0, ge=-100, le=100, description="Higher runs sooner within its queue.")


def describe(info: runq.TaskInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": info.id,
        "name": info.name,
        "queue": info.queue,
        "priority": info.priority,
        "status": info.status.value,
        "worker": info.worker,
    }
    if info.status is runq.Status.SUCCEEDED:
        body["result"] = info.result
    elif info.error is not None:
        body["error"] = {"type": info.error.get("type"), "message": info.error.get("message")}
    return body


async def found(task_id: str) -> runq.TaskInfo:
    try:
        info = await queue.ainfo(task_id)
    except ValueError:  # not a runq id at all
        info = None
    if info is None:
        raise HTTPException(404, f"no task {task_id}")
    return info


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.post("/tasks", status_code=202)
async def submit(request: Submit, response: Response) -> dict[str, str]:
    """Enqueue a task by name; its queue and retry policy are the task's own."""
    if request.name not in PUBLIC:
        raise HTTPException(422, f"no task named {request.name!r}; choose one of {sorted(PUBLIC)}")
    try:
        handle = await queue.aenqueue(request.name, kwargs=request.payload, priority=request.priority)
    except (TypeError, ValueError) as exc:  # a payload that does not fit the task, or too big
        raise HTTPException(422, str(exc)) from None
    response.headers["Location"] = f"/tasks/{handle.id}"
    return {"id": handle.id, "status_url": f"/tasks/{handle.id}", "events_url": f"/tasks/{handle.id}/events"}


@api.get("/tasks")
async def recent(status: runq.Status | None = None, limit: int = 20) -> list[dict[str, Any]]:
    return [describe(info) for info in await queue.alist(status, limit=min(max(limit, 1), 100))]


@api.get("/tasks/{task_id}")
async def task_status(task_id: str) -> dict[str, Any]:
    return describe(await found(task_id))


@api.get("/tasks/{task_id}/events")
async def task_events(task_id: str) -> StreamingResponse:
    """Server-sent events: one ``status`` event per status change, then ``done`` with the outcome."""
    await found(task_id)
    return StreamingResponse(status_events(queue.handle(task_id)), media_type="text/event-stream")


@api.get("/queues")
async def queues() -> dict[str, Any]:
    """Depth of every queue, by state, and how fast tasks finish."""
    stats = await queue.astats()
    depths = {name: vars(counts) for name, counts in sorted(stats.queues.items())}
    return {"queues": depths, "throughput": stats.throughput}


@api.get("/workers")
async def workers() -> list[dict[str, Any]]:
    """Live workers (from their heartbeats): what they serve and what they run right now."""
    now = time.time()
    return [
        {
            "id": worker.id,
            "queues": list(worker.queues),
            "pool": worker.pool,
            "concurrency": worker.concurrency,
            "running": list(worker.current),
            "heartbeat_age": round(max(0.0, now - worker.last_seen), 1),
        }
        for worker in await queue.aworkers()
    ]


async def status_events(handle: runq.Handle[Any], every: float = 0.5) -> AsyncIterator[str]:
    last = None
    while True:
        info = await handle.ainfo()
        if info is None:
            yield sse("done", {"id": handle.id, "status": "gone"})
            return
        if info.status is not last:
            last = info.status
            yield sse("status", {"id": info.id, "status": info.status.value})
        if info.status.final:
            yield sse("done", describe(info))
            return
        yield ": waiting\n\n"  # a comment: keeps proxies from closing an idle stream
        # Returns as soon as the task ends (on Redis without polling), else after ``every``.
        with contextlib.suppress(TimeoutError, runq.TaskFailed, runq.TaskCancelled):
            await handle.aresult(timeout=every)


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
