"""runq behind a FastAPI app: submit from an async endpoint, poll, await with a timeout, stream.

Run it (two terminals, same RUNQ_URL; the SQLite default works on one machine)::

    cd examples
    runq worker fastapi_app:queue --pool async        # build_report is a coroutine
    uvicorn fastapi_app:api

    curl -si -X POST localhost:8000/reports -H 'content-type: application/json' -d '{"rows": 5}'
    curl -s localhost:8000/tasks/<id>                  # poll: status, result when done
    curl -s 'localhost:8000/tasks/<id>/result?timeout=10'   # wait up to 10 s
    curl -sN localhost:8000/tasks/<id>/events          # server-sent status and progress until it ends

Every runq call here is the asyncio one (``adelay``, ``aresult``, ``ainfo``, ``acancel``,
``aevents``), so no request ever blocks the event loop on the broker. The task reports its
progress row by row (``runq.current().progress``); the event stream relays ``Handle.aevents()``:
a ``status`` event per status change (pending → running → succeeded/failed/cancelled), a
``progress`` event per progress update, then ``done`` with the outcome. It is woken by the
broker (Redis pub/sub, PostgreSQL ``LISTEN``; SQLite: a short poll), never by a polling loop here.
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
        runq.current().progress((row + 1) / rows, f"row {row + 1} of {rows}")
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
    if info.progress is not None:
        body["progress"] = {"value": info.progress.value, "message": info.progress.message}
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
    """Server-sent events: ``status`` per status change, ``progress`` per update, then ``done``."""
    await found(task_id)
    return StreamingResponse(status_events(queue.handle(task_id)), media_type="text/event-stream")


async def status_events(handle: runq.Handle[Any]) -> AsyncIterator[str]:
    last = None
    try:
        async for event in handle.aevents():  # the status now, then each change, until the final one
            kind = "progress" if event.status is last else "status"
            last = event.status
            yield sse(kind, {"id": handle.id, **event.to_dict()})
    except runq.TaskNotFound:  # purged meanwhile
        yield sse("done", {"id": handle.id, "status": "gone"})
        return
    info = await handle.ainfo()
    yield sse("done", describe(info) if info is not None else {"id": handle.id, "status": "gone"})


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
