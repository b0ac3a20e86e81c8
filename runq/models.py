"""Pure data shared by the app, the brokers and the worker: no I/O here.

A task travels as a :class:`Message` (JSON, never pickle). The broker keeps it as
an opaque payload next to the few fields it needs to order and expire tasks, and
hands it back inside a :class:`Claim`. The worker reports what happened as an
:class:`Outcome`; the broker accepts it only if the claim's fencing token still
matches, so a worker that stalled past its lease cannot overwrite a newer attempt.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from runq.fastinit import maker

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # the rule: runq/options.py's check_queue
# The range read timestamps are clamped to: a day inside datetime's own, so that showing
# one in any local timezone (``astimezone()``) cannot overflow either.
EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

# Seconds a finished task's record (its result, or why it ended) is kept: ``Settings.result_ttl``'s
# default (runq/settings.py, ``RUNQ_RESULT_TTL``), defined here because a message leaves a
# result_ttl equal to it out of its payload and the Redis functions read that absence as it.
# Ten minutes, not a day: every finished task costs ~0.5-0.9 kB on each broker for this long,
# ~1 GB of Redis at 2,000 tasks/s (docs/reliability.md, "Retention"; bench/retention.py).
DEFAULT_RESULT_TTL = 600.0
# A workflow step whose result (or end) a later step reads is kept at least this long unless its
# result_ttl was chosen (runq/workflow.py: kept_for_later_steps): a backlog may delay that step.
WORKFLOW_RESULT_TTL = 86400.0


class Status(str, enum.Enum):
    """Where a task is in its lifecycle (SPEC §3)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATUSES

    def __str__(self) -> str:
        return self.value


FINAL_STATUSES = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


def new_task_id(queue: str) -> str:
    """A URL-safe id that carries its queue: ``<queue>.<26 characters>``.

    Carrying the queue lets a Redis Cluster broker find the task's hash slot from
    the id alone (see docs/architecture.md). The 32 hex digits are the creation time
    in microseconds (13 digits) and 76 random bits, so ids sort by creation time and
    a broker can read the enqueue time back from an id.
    """
    return f"{queue}.{int(time.time() * 1e6):013x}{os.urandom(10).hex()[:19]}"


def queue_of(task_id: str) -> str:
    """The queue a task id belongs to; ``ValueError`` for a string that is not a runq id.

    Ids look like ``emails.0190a3f2c4d1e8f3a9b2c7d4e5f60718``.
    """
    queue, sep, unique = task_id.rpartition(".")
    if not sep or len(unique) != 32 or not QUEUE_NAME.match(queue):
        raise ValueError(f"not a runq task id: {task_id!r}")
    return queue


def to_datetime(timestamp: float | None) -> datetime | None:
    """An epoch timestamp as an aware UTC datetime, for any float a broker may hold.

    Total on purpose: a record written by an older runq or by hand (an eta in the year
    33715) must not break listing, ``info`` or the dashboard. Times outside
    :data:`EARLIEST` ... :data:`LATEST` (0001-01-02 ... 9999-12-30 UTC) read as that bound;
    NaN reads as ``None`` (unknown).
    """
    if timestamp is None or math.isnan(timestamp):
        return None
    try:
        moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return LATEST if timestamp > 0 else EARLIEST
    return min(max(moment, EARLIEST), LATEST)


class Sealer(Protocol):
    """Seals a payload for one task id (runq/signing.py's ``Signer``: an HMAC at its end)."""

    def seal(self, task_id: str, body: str) -> str: ...


@dataclass(frozen=True)
class Message:
    """One task as enqueued: everything a worker needs to run it and apply its policy."""

    id: str
    name: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    delay: float = 0.0
    key: str | None = None
    # Retry policy set by the producer; None: the worker's task default applies.
    retries: int | None = None
    backoff: float | None = None
    backoff_max: float | None = None
    jitter: bool | None = None
    timeout: float | None = None
    result_ttl: float = DEFAULT_RESULT_TTL
    soft_timeout: float | None = None  # SoftTimeout raised inside the task; written only when set
    after: tuple[str, ...] = ()
    # Workflow steps: "first" prepends the result of after[0] to args (chain), "list"
    # prepends the list of the results of every task in after (chord callback).
    pass_results: Literal["first", "list"] | None = None
    # The second dependency mode (brokers/rules.py): released once every parent in ``after`` is
    # final, whatever its outcome, and never cancelled by one (a batch's summary step).
    after_final: bool = False
    # OpenTelemetry (runq/observe/tracing.py): the producer span's W3C trace context; written only when set.
    trace: dict[str, str] | None = None
    # The producer's signing keys (App(signing_keys=...)): never in the payload, but carried by
    # dataclasses.replace, so a workflow step or a traced message is signed as its App signs.
    sealer: Sealer | None = field(default=None, repr=False, compare=False)
    # Flow control (SPEC §9), kept by the broker beside the payload; written only when set.
    expires: float | None = None  # seconds after enqueue: not started by then, it ends cancelled (Expired)
    debounce: float | None = None  # seconds: enqueueing its key again before it starts replaces it
    concurrency: int | None = None  # at most this many runs of its ``slot`` at once, fleet-wide
    slot: str | None = None  # what ``concurrency`` counts (runq/options.py: limit_slot)

    @functools.cached_property
    def payload(self) -> str:
        """The JSON text, encoded once (the producer checks its size, the broker stores it).

        Only the name and the fields that differ from their defaults are written; the id
        and the queue are the broker's keys already. A no-op task is ``{"name":"noop"}``,
        which keeps a million queued tasks small. Raises ``TypeError``/``ValueError`` for
        arguments JSON cannot represent.
        """
        data: dict[str, Any] = {"name": self.name}
        for name, default in _PAYLOAD_DEFAULTS:
            value = getattr(self, name)
            if value != default:
                data[name] = list(value) if name == "after" else value
        body = _JSON.encode(data)
        return body if self.sealer is None else self.sealer.seal(self.id, body)

    @classmethod
    def decode(cls, raw: str | bytes, id: str, queue: str) -> Message:
        """Parse the payload of task ``id`` in ``queue``; ``ValueError`` for anything else."""
        try:
            data = json.loads(raw)
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"payload is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("payload is not a JSON object")
        data.pop("sig", None)  # a signed payload's signature: the worker checked it (runq/signing.py)
        if "sealer" in data:
            raise ValueError("payload has wrong fields: sealer")
        if "after" in data:
            data["after"] = tuple(data["after"])
        if cls is Message and "name" in data and _DECODED.issuperset(data):  # every task: runq/fastinit.py
            data["id"], data["queue"] = id, queue
            message = _make_message(**data)
        else:
            try:  # __init__ says what is wrong
                message = cls(id=id, queue=queue, **data)
            except TypeError as exc:
                raise ValueError(f"payload has wrong fields: {exc}") from None
        if not isinstance(message.name, str) or not isinstance(message.args, list):
            raise ValueError("payload has a bad name or args")
        if not isinstance(message.kwargs, dict):
            raise ValueError("payload kwargs is not an object")
        return message


_DECODED = frozenset(spec.name for spec in fields(Message)) - {"id", "queue", "sealer"}  # a payload's fields
_make_message = maker(Message)
_PAYLOAD_DEFAULTS = tuple(
    (spec.name, spec.default_factory() if callable(spec.default_factory) else spec.default)
    for spec in fields(Message)
    if spec.name not in ("id", "queue", "name", "sealer")
)


@dataclass(frozen=True)
class Claim:
    """A task handed to one worker: valid while ``token`` is the task's current fence."""

    id: str
    queue: str
    payload: str
    attempt: int
    token: str


OutcomeKind = Literal["succeeded", "retry", "failed", "release"]


@dataclass(frozen=True)
class BreakerRule:
    """A task's circuit breaker (``@app.task(breaker=(failures, seconds))``), carried by an
    :class:`Outcome` so that ``settle`` drives it in the same step that applies the outcome."""

    name: str
    failures: int
    seconds: float


@dataclass(frozen=True)
class Outcome:
    """What became of one claim, for :meth:`Broker.settle`.

    ``retry`` waits ``delay`` seconds on the broker's clock. ``release`` puts a task
    back as pending at once (or scheduled ``delay`` seconds from now: a task held back
    by its rate limit or circuit breaker); ``uncount`` also gives back its attempt (for
    a task that was claimed but never started). ``runtime``, when known, is how long the
    run took: the broker dates its start ``runtime`` seconds before it settles, since a
    prefetched task may wait in the worker between its claim and its start.
    """

    id: str
    token: str
    kind: OutcomeKind
    result: str | None = None
    error: Mapping[str, Any] | None = None
    delay: float = 0.0
    result_ttl: float = DEFAULT_RESULT_TTL
    uncount: bool = False
    runtime: float | None = None
    breaker: BreakerRule | None = None  # set on a run's end (never a release) of a task with a breaker


@dataclass(frozen=True)
class TaskInfo:
    """A snapshot of one task, as returned by ``App.info`` and ``Handle.info``."""

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
    progress: Progress | None = None  # the latest runq.current().progress() of a run, if any

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO 8601) for the CLI and the HTTP API."""
        data = asdict(self)
        data["status"] = self.status.value
        for name in ("enqueued_at", "started_at", "finished_at", "eta"):
            value = data[name]
            data[name] = value.isoformat() if value else None
        data["progress"] = self.progress.to_dict() if self.progress is not None else None
        return data


@dataclass(frozen=True)
class Progress:
    """How far a running task says it is (``runq.current().progress()``): ``value`` from 0.0
    to 1.0 and/or a short ``message``; ``at`` is when the broker stored it (its clock)."""

    value: float | None
    message: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "message": self.message, "at": self.at.isoformat()}

    def __str__(self) -> str:
        """``40% · copying files``: how ``runq info`` shows it."""
        return " · ".join(part for part in (None if self.value is None else f"{self.value:.0%}", self.message) if part)


@dataclass(frozen=True)
class ProgressReport:
    """One run's latest progress, for :meth:`Broker.progress`: applied only while ``token`` is
    the task's current claim (a stale attempt never overwrites a newer one's)."""

    id: str
    token: str
    value: float | None
    message: str | None

    def encode(self, at: float) -> str:
        """The stored JSON text, stamped ``at`` (the broker's clock)."""
        return _JSON.encode({"value": self.value, "message": self.message, "at": at})


@dataclass(frozen=True)
class Event:
    """One step of ``Handle.events()``: the task's status and progress at ``at`` (a change of
    either, or, for the first event of a stream, the state when the stream was opened)."""

    status: Status
    progress: Progress | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "progress": self.progress.to_dict() if self.progress is not None else None,
            "at": self.at.isoformat(),
        }


def progress_of(raw: Any) -> Progress | None:
    """A broker's stored progress (JSON text, or the object a Redis record holds) as a
    :class:`Progress`; anything that does not read as one is ``None``, never an error."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    if not isinstance(raw, dict):
        return None
    value, message, at = raw.get("value"), raw.get("message"), to_datetime(_float(raw.get("at")))
    if at is None or (value is not None and not isinstance(value, (int, float))) or isinstance(value, bool):
        return None
    return Progress(None if value is None else float(value), message if isinstance(message, str) else None, at)


def change_event(status: Any, progress: Any, at: Any) -> Event | None:
    """An :class:`Event` from a broker's record of one change; ``None`` for one that does not
    read (an unknown status), so a bad entry is skipped rather than ending a stream."""
    try:
        known = Status(status.decode() if isinstance(status, bytes) else status)
    except ValueError:
        return None
    return Event(known, progress_of(progress), to_datetime(_float(at)) or datetime.now(timezone.utc))


def task_info(
    record: Mapping[str, Any],
) -> TaskInfo:
    """Build a TaskInfo from a broker's flat record (same field names on every broker).

    ``record`` has: id, queue, status, payload, attempts, result (JSON text or None),
    error (JSON text or None), worker, and the float timestamps enqueued_at,
    started_at, finished_at, ready_at. Whatever those hold (an older runq's values, a
    hand's edit), the TaskInfo is built: out-of-range times are clamped (``to_datetime``),
    a payload or result that does not parse is shown as what it is, never raised.
    """
    payload = record["payload"]
    try:
        message: Message | None = Message.decode(payload, record["id"], record["queue"])
    except ValueError:
        message = None
    status = Status(record["status"])
    ready_at = record.get("ready_at")
    error = _json(record.get("error"))
    return TaskInfo(
        id=record["id"],
        name=message.name if message else str(record.get("name") or "?"),
        queue=record["queue"],
        status=status,
        priority=message.priority if message and _is_int(message.priority) else 0,
        attempts=int(record.get("attempts") or 0),
        args=message.args if message else None,
        kwargs=message.kwargs if message else None,
        result=_json(record.get("result")),
        error=error if error is None or isinstance(error, dict) else {"type": "?", "message": str(error)},
        enqueued_at=to_datetime(_float(record.get("enqueued_at"))),
        started_at=to_datetime(_float(record.get("started_at"))),
        finished_at=to_datetime(_float(record.get("finished_at"))),
        worker=record.get("worker") or None,
        key=message.key if message and isinstance(message.key, str) else None,
        eta=_eta(ready_at) if status is Status.SCHEDULED else None,
        progress=progress_of(record.get("progress")),
    )


def _eta(ready_at: Any) -> datetime | None:
    """A scheduled task's eta; ``None`` while it is held by its concurrency limit (its
    ``ready_at`` is infinite: it runs when a slot frees, not at a time)."""
    when = _float(ready_at)
    return None if when is not None and math.isinf(when) else to_datetime(when)


def _float(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan  # not a time at all: read as unknown


def _json(text: str | bytes | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text if isinstance(text, str) else text.decode(errors="replace")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class QueueStats:
    pending: int = 0
    scheduled: int = 0
    waiting: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def retained(self) -> int:
        """Finished tasks kept: succeeded and cancelled ones for their ``result_ttl``, failed
        ones until purged (docs/reliability.md, "Retention")."""
        return self.succeeded + self.failed + self.cancelled


@dataclass(frozen=True)
class Percentiles:
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, samples: list[float]) -> Percentiles:
        if not samples:
            return cls()
        ordered = sorted(samples)

        def pick(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return cls(pick(0.50), pick(0.95), pick(0.99))


@dataclass(frozen=True)
class Stats:
    """``App.stats()``: counts per queue, lifetime counters, latency over the last 5 minutes."""

    queues: dict[str, QueueStats]
    counters: dict[str, int]
    wait: Percentiles
    run: Percentiles
    throughput: float  # tasks finished per second over the last minute
    # Circuit breakers by task name: {"state": closed|open|half_open, "failures": n, "open_until": t}
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COUNTERS = ("enqueued", "succeeded", "failed", "retried", "cancelled")


@dataclass(frozen=True)
class WorkerInfo:
    """A worker's heartbeat, as listed by ``App.workers()``."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    pool: str
    concurrency: int
    current: tuple[str, ...] = ()  # the tasks it is running: started, not yet finished
    counts: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    last_seen: float = 0.0
    prefetched: tuple[str, ...] = ()  # claimed ahead, waiting for a free slot (not running)

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> WorkerInfo:
        data = json.loads(raw)
        data["queues"] = tuple(data["queues"])
        data["current"] = tuple(data["current"])
        data["prefetched"] = tuple(data.get("prefetched", ()))  # absent from an older worker's
        return cls(**data)


@dataclass(frozen=True)
class DrainResult:
    """What ``app.drain()`` did: how far the broker's counters moved while it ran
    (``retried`` includes attempts lost to ``memory://?redeliver``; ``cancelled``, the
    dependents a failed workflow step cancelled)."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
