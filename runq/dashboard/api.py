"""The JSON API under ``/api``: the same operations as the CLI, over HTTP.

Every route is a plain ``def`` so FastAPI runs it in its thread pool: the brokers
are synchronous, and a slow SQLite write must not stall the event loop that feeds
the live page. Changes of state are POSTs only; GETs never change anything.

Errors a client can fix get a 4xx with a readable ``detail``: a body or parameter
runq refuses is 422 in FastAPI's validation-error shape, whoever refused it: pydantic
(a malformed body, a wrong JSON type), runq/options.py (the rules the CLI and Python
apply to names and options: an empty or over-long name, a delay over 10 years, a
priority out of range) or ``App.enqueue`` (an unknown task name, arguments that do not
fit the task, a payload over ``max_payload``). An unknown id is 404; a task in the
wrong state for the action is 409.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator
from starlette.concurrency import run_in_threadpool

from runq import options as rules
from runq.app import App
from runq.errors import BrokerUnavailable, TaskNotFound, printable
from runq.handles import Handle
from runq.logs import mask_url
from runq.models import QUEUE_NAME, Status, TaskInfo, WorkerInfo, queue_of

log = logging.getLogger("runq.dashboard")
DEAD_LETTER_LIMIT = 50
RECENT_LIMIT = 12


class Error(BaseModel):
    detail: str


def _rule(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A runq/options.py check as a pydantic validator: every refusal a ValueError (a 422)."""

    def validate(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except TypeError as exc:  # pydantic turns only ValueError into a 422
            raise ValueError(str(exc)) from None

    return validate


def _schema(rule: Callable[[], dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """A field's JSON Schema constraints from runq/options.py, made when the OpenAPI document is."""

    def extend(schema: dict[str, Any]) -> None:
        schema.update(rule())

    return extend


def _queue_schema() -> dict[str, Any]:
    return {"pattern": QUEUE_NAME.pattern}


class TaskIn(BaseModel):
    """A task to enqueue by name. The limits are runq/options.py's, as for the CLI and Python;
    a dashboard whose APP registers tasks refuses a name it does not know."""

    # The rules between options that JSON Schema can state (runq/options.py check_flow); that a
    # concurrency key must be an argument of the call it cannot, and is a 422 like the others.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"dependentRequired": {"debounce": ["key"]}, "not": {"required": ["debounce", "delay"]}},
    )

    name: StrictStr = Field(examples=["send_email"], json_schema_extra=_schema(rules.name_schema))
    args: list[Any] = Field(default_factory=list, examples=[["a@b.c"]])
    kwargs: dict[str, Any] = Field(default_factory=dict, examples=[{"subject": "hi"}])
    queue: StrictStr | None = Field(default=None, examples=["default"], json_schema_extra=_schema(_queue_schema))
    priority: StrictInt | None = Field(
        default=None,
        description="Higher runs sooner.",
        json_schema_extra={"minimum": rules.PRIORITY_MIN, "maximum": rules.PRIORITY_MAX},
    )
    delay: StrictFloat | StrictInt | None = Field(
        default=None,
        description="Seconds before it may run.",
        json_schema_extra={"minimum": 0, "maximum": rules.MAX_SECONDS},
    )
    key: StrictStr | None = Field(
        default=None, description="Idempotency key.", json_schema_extra=_schema(rules.key_schema)
    )
    timeout: StrictFloat | StrictInt | None = Field(
        default=None,
        description="Seconds before the run is stopped.",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": rules.MAX_SECONDS},
    )
    soft_timeout: StrictFloat | StrictInt | None = Field(
        default=None,
        description="Seconds before runq.SoftTimeout is raised inside the task; less than timeout.",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": rules.MAX_SECONDS},
    )
    expires: StrictFloat | StrictInt | None = Field(
        default=None,
        description="Seconds: a task not started by then ends cancelled (Expired).",
        json_schema_extra={"minimum": 0, "maximum": rules.MAX_SECONDS},
    )
    debounce: StrictFloat | StrictInt | None = Field(
        default=None,
        description="Seconds (needs key): enqueueing the key again before it starts replaces it.",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": rules.MAX_SECONDS},
    )
    concurrency: StrictInt | StrictStr | dict[str, Any] | None = Field(
        default=None,
        description='Runs at once: N, "N:arg" or {"runs": N, "key": "arg"} (per value of that argument, which'
        " the call's kwargs must give).",
        examples=[8, "8:user_id"],
    )

    @field_validator("priority", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        """JSON has one number type: 5.0 is the integer 5 (as JSON Schema's "integer" says)."""
        return int(value) if isinstance(value, float) and value.is_integer() else value

    _name = field_validator("name")(_rule(rules.check_task_name))
    _queue = field_validator("queue")(_rule(rules.check_queue))
    _priority = field_validator("priority")(_rule(rules.check_priority))
    _delay = field_validator("delay")(_rule(rules.check_delay))
    _key = field_validator("key")(_rule(rules.check_key))
    _timeout = field_validator("timeout")(_rule(lambda value: rules.check_seconds("timeout", value, zero=False)))
    _soft_timeout = field_validator("soft_timeout")(_rule(rules.check_soft_timeout))
    _expires = field_validator("expires")(_rule(rules.check_expires))
    _debounce = field_validator("debounce")(_rule(rules.check_debounce))
    _concurrency = field_validator("concurrency")(_rule(rules.check_concurrency))


SUBMITTED_OPTIONS = {"queue", "priority", "delay", "key", "timeout", "soft_timeout", "expires", "debounce"}


class Enqueued(BaseModel):
    id: str
    status: Status | None


class ProgressOut(BaseModel):
    value: float | None = Field(description="From 0.0 to 1.0, as the task reported it.")
    message: str | None
    at: datetime = Field(description="When the broker stored it.")


class EventOut(BaseModel):
    """One event of ``GET /api/tasks/{id}/events``: the task's status and progress."""

    status: Status
    progress: ProgressOut | None
    at: datetime


class TaskOut(BaseModel):
    id: str
    name: str
    queue: str
    status: Status
    priority: int
    attempts: int
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    result: Any
    error: dict[str, Any] | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    key: str | None = None
    eta: datetime | None = None
    progress: ProgressOut | None = Field(default=None, description="The latest runq.current().progress().")


class QueueOut(BaseModel):
    name: str
    pending: int
    scheduled: int
    waiting: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    queues: list[str]
    pool: str
    concurrency: int
    current: list[str]
    counts: dict[str, int]
    started_at: float
    last_seen: float
    heartbeat_age: float = Field(description="Seconds since the last heartbeat, by the dashboard's clock.")


class PercentilesOut(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class StatsOut(BaseModel):
    queues: dict[str, dict[str, int]]
    counters: dict[str, int]
    wait: PercentilesOut
    run: PercentilesOut
    throughput: float = Field(description="Tasks finished per second over the last minute.")


class RetainedOut(BaseModel):
    """What finished tasks kept for their result_ttl cost (docs/reliability.md, "Retention")."""

    tasks: int = Field(description="Finished tasks kept: succeeded and cancelled for result_ttl, failed until purged.")
    storage_bytes: int | None = Field(
        description="Bytes the broker's store takes (Redis used_memory, PostgreSQL runq's tables, SQLite's file);"
        " null when the broker cannot say."
    )


class PurgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["failed", "succeeded", "cancelled"] = "failed"
    queue: StrictStr | None = Field(default=None, json_schema_extra=_schema(_queue_schema))

    _queue = field_validator("queue")(_rule(rules.check_queue))


class Purged(BaseModel):
    purged: int


class QueuePaused(BaseModel):
    queue: str
    paused: bool
    changed: bool = Field(description="False when the queue already was so.")


class Health(BaseModel):
    status: Literal["ok"]
    broker: str


class PeriodicOut(BaseModel):
    """One of APP's periodic tasks (``@app.periodic``) and its next tick."""

    name: str
    schedule: str = Field(examples=["0 9 * * * (Europe/Paris)", "every 30s"])
    cron: str | None
    every: float | None
    tz: str = Field(description="The IANA zone its cron is read in.")
    args: list[Any]
    kwargs: dict[str, Any]
    next_run: datetime = Field(description="The next tick, UTC.")


class Snapshot(BaseModel):
    """Everything the page shows, in one document: one SSE event, or one poll."""

    time: float
    stats: StatsOut
    workers: list[WorkerOut]
    dead: list[TaskOut]
    recent: list[TaskOut]
    periodic: list[PeriodicOut] = Field(description="APP's periodic tasks, soonest first.")
    paused: list[str] = Field(default_factory=list, description="The queues paused now.")
    retained: RetainedOut


QUEUE = Path(pattern=QUEUE_NAME.pattern, description="A queue name (runq/options.py: check_queue).")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Error, "description": "No such task."}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Error, "description": "Not possible in its state."}}


async def unprocessable(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with the refused inputs made JSON (``NaN`` and ``Infinity`` arrive as
    Python's json reads them, and its own handler cannot write them back: a 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": jsonable_encoder(_finite(errors))}, status_code=422)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def task_out(info: TaskInfo) -> TaskOut:
    return TaskOut.model_validate(_utf8(info.to_dict()))


def _utf8(value: Any) -> Any:
    """``value`` with each lone surrogate (a task may return one: JSON holds it, UTF-8 cannot,
    so the response could not be written) as its escape in text, as runq stores error messages."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_utf8(key): _utf8(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_utf8(item) for item in value]
    return value


def worker_out(worker: WorkerInfo, now: float) -> WorkerOut:
    return WorkerOut(**vars(worker), heartbeat_age=max(0.0, now - worker.last_seen))


def periodic_out(app: App, now: float) -> list[PeriodicOut]:
    """APP's schedules with their next tick after ``now``, soonest first."""
    rows = [
        PeriodicOut(
            name=entry.name,
            schedule=entry.schedule,
            cron=entry.cron,
            every=entry.every,
            tz=entry.tz or "UTC",
            args=list(entry.args),
            kwargs=dict(entry.kwargs),
            next_run=datetime.fromtimestamp(entry.next_after(now), timezone.utc),
        )
        for entry in app.schedules
    ]
    return sorted(rows, key=lambda row: (row.next_run, row.name))


def public_url(url: str) -> str:
    """The broker URL without its password, fit to show to anyone who can see the page."""
    return mask_url(url)


# Answered by runq.dashboard.guard before any route: documented so clients expect them.
GUARDED: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "The Host header is not one of the dashboard's names."},
    403: {"model": Error, "description": "A state change from another site (Origin, Sec-Fetch-Site)."},
    415: {"model": Error, "description": "A state change without Content-Type: application/json."},
}


def create_router(app: App, interval: float = 1.0) -> APIRouter:
    """The whole ``/api``: one router per thing a user looks at, each a closure over ``app``."""
    router = APIRouter(prefix="/api", responses=GUARDED)
    router.include_router(_tasks(app))
    router.include_router(_fleet(app))
    router.include_router(_live(app, interval))
    return router


def _find(app: App, task_id: str) -> TaskInfo:
    """The task, or a 404 naming why: not an id at all, or no such task (any more)."""
    try:
        queue_of(task_id)
    except ValueError:
        raise HTTPException(404, f"not a runq task id: {task_id!r}") from None
    info = app.info(task_id)
    if info is None:
        raise HTTPException(404, f"no task with id {task_id}")
    return info


def _tasks(app: App) -> APIRouter:
    """Tasks: enqueue, list, look at, follow, cancel, retry, purge."""
    router = APIRouter()

    @router.post("/tasks", status_code=202, response_model=Enqueued)
    def submit(body: TaskIn) -> Enqueued:
        """Enqueue a task by name, as ``App.enqueue`` does; returns its id at once."""
        options = body.model_dump(include=SUBMITTED_OPTIONS, exclude_none=True)
        if body.concurrency is not None:  # a runq.Limit by now (runq/options.py)
            options["concurrency"] = body.concurrency
        try:
            handle = app.enqueue(body.name, body.args, body.kwargs, **options)
        except (TypeError, ValueError) as exc:
            raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(exc)}]) from None
        info = app.info(handle.id)
        return Enqueued(id=handle.id, status=info.status if info else None)

    @router.get("/tasks", response_model=list[TaskOut])
    def list_tasks(
        status: Status | None = None,
        queue: str | None = Query(default=None, pattern=QUEUE_NAME.pattern),
        limit: int = Query(default=50, ge=1, le=1000),
    ) -> list[TaskOut]:
        """Tasks newest first, optionally only one state and one queue."""
        return [task_out(t) for t in app.list(status, queue, limit)]

    @router.get("/tasks/{task_id}", response_model=TaskOut, responses=NOT_FOUND)
    def get_task(task_id: str) -> TaskOut:
        return task_out(_find(app, task_id))

    @router.get(
        "/tasks/{task_id}/events",
        response_class=StreamingResponse,
        responses={**NOT_FOUND, 200: {"content": {"text/event-stream": {}}, "model": EventOut}},
    )
    async def task_events(task_id: str) -> StreamingResponse:
        """Server-sent events of one task (``Handle.aevents()``): a ``task`` event with its status
        and progress now, then one per change, until its final status; then the stream ends."""
        await run_in_threadpool(_find, app, task_id)
        return StreamingResponse(
            _task_stream(app.handle(task_id)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.post("/tasks/{task_id}/cancel", response_model=TaskOut, responses={**NOT_FOUND, **CONFLICT})
    def cancel_task(task_id: str) -> TaskOut:
        """Cancel a task that has not finished; 409 when it already has."""
        _find(app, task_id)
        if not app.cancel(task_id):
            raise HTTPException(409, "the task has already finished")
        return task_out(_find(app, task_id))

    @router.post("/tasks/{task_id}/retry", response_model=TaskOut, responses={**NOT_FOUND, **CONFLICT})
    def retry_task(task_id: str) -> TaskOut:
        """Put a failed or cancelled task back to pending with its attempts reset; 409 otherwise."""
        _find(app, task_id)
        if not app.retry(task_id):
            raise HTTPException(409, "only failed or cancelled tasks can be retried")
        return task_out(_find(app, task_id))

    @router.post("/purge", response_model=Purged)
    def purge(body: PurgeIn | None = None) -> Purged:
        """Delete finished tasks in one state: the dead-letter set (``failed``) by default."""
        body = body or PurgeIn()
        return Purged(purged=app.purge(body.status, body.queue))

    return router


def _fleet(app: App) -> APIRouter:
    """Queues (and pausing them), workers, counts, the broker's health."""
    router = APIRouter()

    @router.get("/queues", response_model=list[QueueOut])
    def queues() -> list[QueueOut]:
        """Tasks per queue and state."""
        return [QueueOut(name=name, **vars(q)) for name, q in sorted(app.stats().queues.items())]

    def set_paused(queue: str, paused: bool) -> QueuePaused:
        try:
            rules.check_queue(queue)
        except ValueError as exc:
            raise RequestValidationError([{"type": "value_error", "loc": ("path", "queue"), "msg": str(exc)}]) from None
        changed = app.pause(queue) if paused else app.resume(queue)
        return QueuePaused(queue=queue, paused=paused, changed=changed)

    @router.post("/queues/{queue}/pause", response_model=QueuePaused)
    def pause_queue(queue: str = QUEUE) -> QueuePaused:
        """Stop workers starting tasks of the queue (within a second); enqueue goes on, running tasks finish."""
        return set_paused(queue, True)

    @router.post("/queues/{queue}/resume", response_model=QueuePaused)
    def resume_queue(queue: str = QUEUE) -> QueuePaused:
        """Let workers start tasks of the queue again."""
        return set_paused(queue, False)

    @router.get("/workers", response_model=list[WorkerOut])
    def workers() -> list[WorkerOut]:
        """Workers with a live heartbeat and the tasks they are running."""
        now = time.time()
        return [worker_out(w, now) for w in app.workers()]

    @router.get("/stats", response_model=StatsOut)
    def stats() -> dict[str, Any]:
        return app.stats().to_dict()

    @router.get("/health", response_model=Health, responses={503: {"model": Error}})
    def health() -> Any:
        """200 when the broker answers a ping, 503 when it does not."""
        try:
            app.broker.ping()
        except BrokerUnavailable as exc:
            return JSONResponse({"detail": f"broker unavailable: {exc}"}, status_code=503)
        return Health(status="ok", broker=public_url(app.settings.url))

    @router.get("/periodic", response_model=list[PeriodicOut])
    def periodic() -> list[PeriodicOut]:
        """APP's periodic tasks and when each runs next (what ``runq beat`` fires)."""
        return periodic_out(app, time.time())

    return router


def _live(app: App, interval: float) -> APIRouter:
    """The dashboard's live view: one snapshot of everything, polled or streamed."""
    router = APIRouter()

    def snapshot() -> Snapshot:
        now = time.time()
        stats = app.stats()
        return Snapshot(
            time=now,
            stats=StatsOut.model_validate(stats.to_dict()),
            workers=[worker_out(w, now) for w in app.workers()],
            dead=[task_out(t) for t in app.list(Status.FAILED, None, DEAD_LETTER_LIMIT)],
            recent=[task_out(t) for t in app.list(None, None, RECENT_LIMIT)],
            periodic=periodic_out(app, now),
            paused=sorted(app.paused()),
            retained=RetainedOut(
                tasks=sum(q.retained for q in stats.queues.values()), storage_bytes=app.broker.storage_bytes()
            ),
        )

    @router.get("/snapshot", response_model=Snapshot)
    def get_snapshot() -> Snapshot:
        """What one live-update event carries, for clients that poll instead of streaming."""
        return snapshot()

    @router.get("/events", response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: one ``snapshot`` event about every second until the client leaves."""
        return StreamingResponse(
            _stream(request, snapshot, interval),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return router


async def _task_stream(handle: Handle[Any]) -> AsyncIterator[str]:
    """One task's events; an outage (or the task purged meanwhile) ends it with an ``error`` event."""
    try:
        async for event in handle.aevents():
            yield f"event: task\ndata: {EventOut.model_validate(event.to_dict()).model_dump_json()}\n\n"
    except (BrokerUnavailable, TaskNotFound) as exc:
        yield f"event: error\ndata: {json.dumps({'detail': str(exc)})}\n\n"


async def _stream(request: Request, snapshot: Any, interval: float) -> AsyncIterator[str]:
    """Emit snapshots; an outage becomes an ``error`` event and the stream goes on."""
    yield f"retry: {int(interval * 2000)}\n\n"
    while not await request.is_disconnected():
        started = time.monotonic()
        try:
            data = (await run_in_threadpool(snapshot)).model_dump_json()
            yield f"event: snapshot\ndata: {data}\n\n"
        except BrokerUnavailable as exc:
            yield f"event: error\ndata: {json.dumps({'detail': f'broker unavailable: {exc}'})}\n\n"
        except Exception as exc:  # one bad read must not end the live page's stream
            log.exception("dashboard snapshot failed")
            yield f"event: error\ndata: {json.dumps({'detail': f'snapshot failed: {type(exc).__name__}'})}\n\n"
        await asyncio.sleep(max(0.05, interval - (time.monotonic() - started)))
