"""runq behind a FastAPI app: submit from an async endpoint, poll, await with a timeout, stream.

Run it (two terminals, same RUNQ_URL; the SQLite default works on one machine)::

    cd examples
    runq worker fastapi_app:queue --pool async        # build_report is a coroutine
    uvicorn fastapi_app:api

    curl -si -X POST localhost:8000/reports -H 'content-type: application/json' -d '{"rows": 5}'
    curl -s localhost:8000/tasks/<id>                  # poll: status, result when done
    curl -s 'localhost:8000/tasks/<id>/result?timeout=10'   # wait up to 10 s
    curl -sN localhost:8000/tasks/<id>/events          # server-sent status changes until it ends

Every runq call here is the asyncio one (``adelay``, ``aresult``, ``ainfo``, ``acancel``), so
no request ever blocks the event loop on the broker. The event stream reports the task's
status changes (pending → running → succeeded/failed/cancelled) and then its result; runq
has no per-task progress reporting yet, so a long task's steps are not streamed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

import runq

queue = runq.App()  # RUNQ_URL, else sqlite:///runq.db in the current directory


@queue.task(timeout=600)
async def build_report(rows: int, seconds_per_row: float = 0.2) -> dict[str, int]:
    """A long task: works through ``rows`` rows."""
    total = 0
    for row in range(rows):
        await asyncio.sleep(seconds_per_row)
        total += row
    return {"rows": rows, "total": total}


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await queue.aclose()  # this loop's broker connections, then the broker


api = FastAPI(title="runq + FastAPI example", lifespan=lifespan)


class ReportRequest(BaseModel):
    rows: int = Field(ge=0, le=10_000)
    seconds_per_row: float = Field(default=0.2, ge=0, le=5)


def describe(info: runq.TaskInfo) -> dict[str, Any]:
    body: dict[str, Any] = {"id": info.id, "status": info.status.value}
    if info.status is runq.Status.SUCCEEDED:
        body["result"] = info.result
    elif info.error is not None:
        body["error"] = info.error
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


@api.post("/reports", status_code=202)
async def submit_report(request: ReportRequest, response: Response) -> dict[str, str]:
    handle = await build_report.adelay(request.rows, request.seconds_per_row)
    response.headers["Location"] = f"/tasks/{handle.id}"
    return {"id": handle.id, "status_url": f"/tasks/{handle.id}"}


@api.get("/tasks/{task_id}")
async def task_status(task_id: str) -> dict[str, Any]:
    return describe(await found(task_id))


@api.get("/tasks/{task_id}/result")
async def task_result(task_id: str, response: Response, timeout: float = 10.0) -> dict[str, Any]:
    """Wait up to ``timeout`` seconds; 200 with the outcome, or 202 (poll the Location) if not done."""
    await found(task_id)
    handle = queue.handle(task_id)
    with contextlib.suppress(TimeoutError, runq.TaskFailed, runq.TaskCancelled):
        await handle.aresult(timeout=min(max(timeout, 0.0), 60.0))
    info = await found(task_id)
    if not info.status.final:
        response.status_code = 202
        response.headers["Location"] = f"/tasks/{task_id}"
    return describe(info)


@api.delete("/tasks/{task_id}")
async def cancel_task(task_id: str) -> dict[str, bool]:
    await found(task_id)
    return {"cancelled": await queue.acancel(task_id)}


@api.get("/tasks/{task_id}/events")
async def task_events(task_id: str) -> StreamingResponse:
    """Server-sent events: one ``status`` event per status change, then ``done`` with the outcome."""
    await found(task_id)
    return StreamingResponse(status_events(queue.handle(task_id)), media_type="text/event-stream")


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
