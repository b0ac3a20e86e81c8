"""Logging set-up: readable text by default, one JSON object per line for log shippers.

Task events carry their fields as ``extra={"task": {...}}`` so both formats show
the same facts (task_id, task, queue, attempt, worker, duration and, when the task is
traced, trace_id and span_id: docs/observability.md) without parsing messages:

    text  2026-01-02 03:04:05,678 INFO    runq.worker: succeeded task_id=default.01j… task=add queue=default
          attempt=1 worker=host:4242:a1b2c3 duration=0.0012s
    json  {"ts": "2026-01-02T03:04:05.678Z", "level": "info", "logger": "runq.worker", "event": "succeeded",
           "task_id": "default.01j…", "task": "add", "queue": "default", "attempt": 1,
           "worker": "host:4242:a1b2c3", "duration": 0.0012}

In JSON the task's fields sit at the top level (``jq 'select(.event == "failed")'``);
``event`` is the message of a task event, ``msg`` the message of any other line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields, with a task event's ``task`` dict flattened into them."""
    extras: dict[str, Any] = {}
    for name, value in record.__dict__.items():
        if name in _STANDARD:
            continue
        if name == "task" and isinstance(value, dict):
            extras.update(value)
        else:
            extras[name] = value
    return extras


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
        data: dict[str, Any] = {
            "ts": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        data["event" if isinstance(record.__dict__.get("task"), dict) else "msg"] = record.getMessage()
        data.update(_extras(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(_pair(name, value) for name, value in extras.items() if value is not None)
        return text


def _pair(name: str, value: Any) -> str:
    if name == "duration" and isinstance(value, float):
        return f"duration={value:.4f}s"
    text = str(value)
    return f"{name}={json.dumps(text) if (' ' in text or not text) else text}"


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send runq's loggers to stderr in ``fmt``; the root logger (the user's) is left alone."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("runq")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for banners and errors.

    Works on the raw netloc so cluster URLs (``h1:1,h2:2``) and IPv6 hosts survive,
    and masks a ``?password=`` query parameter too.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = parts.query
    if "password=" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def password_of(url: str) -> str | None:
    """The URL's password, so an error message that echoes it can be scrubbed."""
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None
