"""OpenTelemetry tracing (SPEC §6), through the OpenTelemetry API only.

The application installs and configures an SDK (exporter, sampler, resource); runq only
asks the global tracer provider for spans. Without the ``otel`` extra, ``ENABLED`` is
``False`` and the App registers no :class:`Tracing` middleware, so no tracing code runs.
With the API but no SDK, spans are non-recording and no trace context is written into
messages, so payloads stay as small as without the extra.

Spans (OpenTelemetry messaging conventions, ``messaging.system = "runq"``):

* ``create <queue>``, kind PRODUCER, one per message, when the producer builds it
  (``on_enqueue``, called by ``App.message``: every sync or async enqueue path goes
  through it). Its W3C ``traceparent``/``tracestate`` go into ``Message.trace``. The span
  ends before the broker call; a caller's own span around ``enqueue`` covers that.
* ``process <queue>``, kind CONSUMER, one per attempt, around the task body wherever it
  runs (thread, coroutine, or process-pool child: ``on_start`` / ``on_end``).
  Its parent is the producer's span, so producer and every attempt share one trace. It
  links to the previous attempt's span when that ran in the same process, and to the
  producer spans of a workflow step's parents (``runq-links`` in the carrier).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from runq.context import TaskContext
from runq.errors import Retry, error_type, retries_on, safe_str
from runq.observe.middleware import Middleware

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, Span, SpanContext, SpanKind, StatusCode, TraceFlags
except ImportError:  # the otel extra is not installed: nothing below ever runs
    ENABLED = False
else:
    ENABLED = True

if TYPE_CHECKING:
    from runq.models import Message
    from runq.tasks import Task

LINKS = "runq-links"  # carrier key: traceparents of a workflow step's parents, space-separated
_REMEMBERED = 4096  # recent producer contexts / failed attempts kept per App for links


class _Recent:
    """A small thread-safe LRU map: id -> traceparent (bounded, so memory stays flat)."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: str, value: str) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > _REMEMBERED:
                self._items.popitem(last=False)

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._items.get(key)


_active: list[trace.Tracer] = []  # runq's tracer, once an SDK's provider is installed


def _tracer() -> trace.Tracer | None:
    """runq's tracer, or ``None`` while no SDK is installed: spans would be no-ops then, and
    skipping them keeps the API-without-SDK case as cheap as no extra (one check per call).
    OpenTelemetry lets the global provider be set only once, so the tracer is kept for good."""
    if _active:
        return _active[0]
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    _active.append(provider.get_tracer("runq"))
    return _active[0]


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parse(traceparent: str) -> SpanContext | None:
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))
    return context if context.is_valid else None


def _links(traceparents: Iterator[str | None]) -> list[Link]:
    found = (_parse(text) for text in traceparents if text)
    return [Link(context) for context in found if context is not None]


def _attributes(operation: str, queue: str, task_id: str, name: str) -> dict[str, Any]:
    return {
        "messaging.system": "runq",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
        "messaging.message.id": task_id,
        "runq.task.name": name,
    }


class Tracing(Middleware):
    """runq's spans, on the middleware seam: a PRODUCER span per message (``on_enqueue``) and
    a CONSUMER span per attempt around the task's body (``on_start`` → ``on_end``, where the
    task runs). The attempt's ids reach the worker's log lines as ``task.notes``."""

    def __init__(self, tasks: Mapping[str, Task[Any, Any]]) -> None:
        self._tasks = tasks  # the App's registry, read when an attempt fails (its retry_for)
        self._open: ContextVar[tuple[Span, object] | None] = ContextVar("runq_span", default=None)
        self._produced = _Recent()  # task id -> traceparent of its producer span (workflow links)
        self._attempts = _Recent()  # task id -> traceparent of its last failed attempt here (retry links)

    def on_enqueue(self, message: Message) -> Message | None:
        """The message with the trace context of its new PRODUCER span (unchanged without an
        SDK), linked to the producer spans of its parents (``after``) made by this App."""
        tracer = _tracer()
        if tracer is None:
            return message
        parents = [text for parent in message.after if (text := self._produced.get(parent))]
        attributes = _attributes("create", message.queue, message.id, message.name)
        with tracer.start_as_current_span(
            f"create {message.queue}", kind=SpanKind.PRODUCER, attributes=attributes, links=_links(iter(parents))
        ) as span:
            context = span.get_span_context()
            if not context.is_valid:
                return message
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        if parents:
            carrier[LINKS] = " ".join(parents)
        self._produced.put(message.id, _traceparent(context))
        return dataclasses.replace(message, trace=carrier)

    def on_start(self, task: TaskContext) -> None:
        tracer = _tracer()
        if tracer is None:
            return
        # The carrier came from a payload: keep only string pairs, so a bad one cannot break a run.
        found = task.trace if isinstance(task.trace, Mapping) else {}
        carrier = {key: value for key, value in found.items() if isinstance(key, str) and isinstance(value, str)}
        previous = self._attempts.get(task.id) if task.attempt > 1 else None
        links = _links(iter([previous, *str(carrier.get(LINKS, "")).split()]))
        attributes = {**_attributes("process", task.queue, task.id, task.name), "runq.task.attempt": task.attempt}
        span = tracer.start_span(
            f"process {task.queue}",
            context=propagate.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )
        self._open.set((span, otel_context.attach(trace.set_span_in_context(span))))
        ids = span.get_span_context()
        if ids.is_valid:
            task.notes["trace_id"], task.notes["span_id"] = f"{ids.trace_id:032x}", f"{ids.span_id:016x}"

    def on_end(self, task: TaskContext, error: BaseException | None) -> None:
        opened = self._open.get()
        if opened is None:
            return
        span, token = opened
        self._open.set(None)
        if error is None:
            span.set_attribute("runq.task.outcome", "succeeded")
        else:
            self._failed(span, task, error)
        otel_context.detach(token)  # type: ignore[arg-type]
        span.end()

    def _failed(self, span: Span, task: TaskContext, error: BaseException) -> None:
        defined = self._tasks.get(task.name)
        retry_for = defined.retry_for if defined is not None else ()
        retryable = isinstance(error, Retry) or retries_on(retry_for, type(error))
        kind = "Retry" if isinstance(error, Retry) else error_type(error)
        span.set_attributes({"runq.task.outcome": "error", "error.type": kind, "runq.task.retryable": retryable})
        span.record_exception(error, attributes={"exception.type": kind})
        span.set_status(StatusCode.ERROR, f"{kind}: {safe_str(error)}")
        ids = span.get_span_context()
        if ids.is_valid:
            self._attempts.put(task.id, _traceparent(ids))


def log_ids(carrier: Any) -> tuple[str, str] | None:
    """``[trace_id, span_id]`` of a message's producer span, from its carrier (no OTel calls):
    the log fields of a task event that has no attempt span (cancelled, malformed...)."""
    text = carrier.get("traceparent") if isinstance(carrier, dict) else None
    parts = text.split("-") if isinstance(text, str) else []
    return (parts[1], parts[2]) if len(parts) == 4 else None
