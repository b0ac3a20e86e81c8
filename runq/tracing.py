"""OpenTelemetry tracing (SPEC §6), through the OpenTelemetry API only.

The application installs and configures an SDK (exporter, sampler, resource); runq only
asks the global tracer provider for spans. Without the ``otel`` extra, ``ENABLED`` is
``False`` and every caller checks it before calling in here, so no tracing code runs.
With the API but no SDK, spans are non-recording and no trace context is written into
messages, so payloads stay as small as without the extra.

Spans (OpenTelemetry messaging conventions, ``messaging.system = "runq"``):

* ``create <queue>``, kind PRODUCER, one per message, when the producer builds it
  (:func:`produce`, called by ``App.message``: every sync or async enqueue path goes
  through it). Its W3C ``traceparent``/``tracestate`` go into ``Message.trace``. The span
  ends before the broker call; a caller's own span around ``enqueue`` covers that.
* ``process <queue>``, kind CONSUMER, one per attempt, around the task body wherever it
  runs (thread, coroutine, or process-pool child: :func:`consume` / :func:`aconsume`).
  Its parent is the producer's span, so producer and every attempt share one trace. It
  links to the previous attempt's span when that ran in the same process, and to the
  producer spans of a workflow step's parents (``runq-links`` in the carrier).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, Span, SpanContext, SpanKind, StatusCode, TraceFlags
except ImportError:  # the otel extra is not installed: nothing below ever runs
    ENABLED = False
else:
    ENABLED = True

if TYPE_CHECKING:
    from runq.models import Message
    from runq.worker.ended import Failed, Finished
    from runq.worker.run import Job

LINKS = "runq-links"  # carrier key: traceparents of a workflow step's parents, space-separated
_REMEMBERED = 4096  # recent producer contexts / failed attempts kept per process for links


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


_produced = _Recent()  # task id -> traceparent of its producer span (workflow links)
_attempts = _Recent()  # task id -> traceparent of its last failed attempt here (retry links)


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


def produce(message: Message) -> Message:
    """The message with the trace context of its new PRODUCER span (unchanged without an SDK)."""
    tracer = _tracer()
    if tracer is None:
        return message
    parents = [text for parent in message.after if (text := _produced.get(parent))]
    links = _links(iter(parents))
    attributes = _attributes("create", message.queue, message.id, message.name)
    with tracer.start_as_current_span(
        f"create {message.queue}", kind=SpanKind.PRODUCER, attributes=attributes, links=links
    ) as span:
        context = span.get_span_context()
        if not context.is_valid:
            return message
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    if parents:
        carrier[LINKS] = " ".join(parents)
    _produced.put(message.id, _traceparent(context))
    return dataclasses.replace(message, trace=carrier)


def with_parents(message: Message) -> Message:
    """A workflow step that waits on ``message.after``: carry its parents' producer contexts
    (those produced in this process) so its CONSUMER spans link to them."""
    found = [text for parent in message.after if (text := _produced.get(parent))]
    if not found or message.trace is None:
        return message
    links = dict.fromkeys([*message.trace.get(LINKS, "").split(), *found])
    return dataclasses.replace(message, trace={**message.trace, LINKS: " ".join(links)})


@contextmanager
def _attempt(tracer: trace.Tracer, job: Job) -> Iterator[Span]:
    # The carrier came from a payload: keep only string pairs, so a bad one cannot break a run.
    found = job.trace if isinstance(job.trace, dict) else {}
    carrier = {key: value for key, value in found.items() if isinstance(key, str) and isinstance(value, str)}
    parent = propagate.extract(carrier)
    previous = _attempts.get(job.id) if job.attempt > 1 else None
    links = _links(iter([previous, *str(carrier.get(LINKS, "")).split()]))
    attributes = {**_attributes("process", job.queue, job.id, job.name), "runq.task.attempt": job.attempt}
    with tracer.start_as_current_span(
        f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links
    ) as span:
        yield span


def _finish(span: Span, job: Job, ended: Finished | Failed) -> Finished | Failed:
    """Put how the attempt ended on its span, and the span's ids on the end (for logs)."""
    from runq.worker.ended import Failed

    context = span.get_span_context()
    if isinstance(ended, Failed):
        error = ended.error
        span.set_attributes(
            {"runq.task.outcome": "error", "error.type": error.type, "runq.task.retryable": ended.retryable}
        )
        span.add_event(
            "exception",
            {
                "exception.type": error.type,
                "exception.message": error.message,
                "exception.stacktrace": error.traceback or "",
            },
        )
        span.set_status(StatusCode.ERROR, f"{error.type}: {error.message}")
        if context.is_valid:
            _attempts.put(job.id, _traceparent(context))
    else:
        span.set_attribute("runq.task.outcome", "succeeded")
    if context.is_valid:
        return dataclasses.replace(ended, trace=(f"{context.trace_id:032x}", f"{context.span_id:016x}"))
    return ended


def consume(job: Job, run: Callable[[], Finished | Failed]) -> Finished | Failed:
    """Run one attempt inside its CONSUMER span (just run it without an SDK)."""
    tracer = _tracer()
    if tracer is None:
        return run()
    with _attempt(tracer, job) as span:
        return _finish(span, job, run())


async def aconsume(job: Job, run: Callable[[], Awaitable[Finished | Failed]]) -> Finished | Failed:
    """:func:`consume` for a coroutine (the async pool); cancellation is recorded on the span."""
    tracer = _tracer()
    if tracer is None:
        return await run()
    with _attempt(tracer, job) as span:
        return _finish(span, job, await run())


def log_ids(carrier: Any) -> tuple[str, str] | None:
    """``[trace_id, span_id]`` of a message's producer span, from its carrier (no OTel calls):
    the log fields of a task event that has no attempt span (cancelled, malformed...)."""
    text = carrier.get("traceparent") if isinstance(carrier, dict) else None
    parts = text.split("-") if isinstance(text, str) else []
    return (parts[1], parts[2]) if len(parts) == 4 else None
