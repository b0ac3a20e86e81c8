"""``tests.tasks:app`` with an OpenTelemetry SDK configured, as an application would do it.

Importing this module (the worker does, and so does each process-pool child) installs a
tracer provider whose finished spans are appended, one JSON object per line, to the file
named by ``RUNQ_TEST_SPANS``: the test reads what every process exported. Never import it
into the test process itself: the global tracer provider can be set only once.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.otel_spans import FileExporter
from tests.tasks import app

__all__ = ["app"]

_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(FileExporter(os.environ["RUNQ_TEST_SPANS"])))
trace.set_tracer_provider(_provider)
