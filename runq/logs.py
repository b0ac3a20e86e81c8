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
import re
import sys
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, NamedTuple
from urllib.parse import unquote, unquote_plus

from runq.options import visible

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
        data = {name: _scrub_hidden(value) if isinstance(value, str) else value for name, value in data.items()}
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One line per event. Text from a broker (a task's name or error) may hold an ESC or a
    newline; it is printed escaped, so it can neither steer a terminal nor forge a line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = visible(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(_pair(name, value) for name, value in extras.items() if value is not None)
        return _scrub_hidden(text)


def _pair(name: str, value: Any) -> str:
    if name == "duration" and isinstance(value, float):
        return f"duration={value:.4f}s"
    text = str(value)
    return f"{name}={json.dumps(text) if (' ' in text or not text or not text.isprintable()) else text}"


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send runq's loggers to stderr in ``fmt``; the root logger (the user's) is left alone."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("runq")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# -- secrets in URLs: the one masker ---------------------------------------------------------

MASK = "***"
_SECRET_PARAMETER = re.compile(r"pass", re.IGNORECASE)  # password, sslpassword, sentinel_password, passwd
_HIDDEN: set[str] = set()  # the secrets of every broker URL this process connected to (see hide)
_HIDDEN_LOCK = threading.Lock()


class _URL(NamedTuple):
    """A URL cut by plain string splitting, as urlsplit cuts it, but keeping every byte:
    urlsplit drops the ``//`` of ``unix:///path`` and the empty netloc of ``sqlite:///``."""

    head: str  # "scheme://" (empty for a string that is no URL)
    userinfo: str  # before the netloc's last "@" ("" when there is no "@")
    at: str  # "@" or ""
    rest: str  # hosts, path
    query: str  # after "?" (without it)
    qmark: str  # "?" or ""
    fragment: str  # "#..." or ""

    @classmethod
    def cut(cls, url: str) -> _URL:
        scheme, sep, rest = url.partition("://")
        head = scheme + sep if sep else ""
        body = rest if sep else url
        body, hash_, fragment = body.partition("#")
        body, qmark, query = body.partition("?")
        if not sep:
            return cls(head, "", "", body, query, qmark, hash_ + fragment)
        netloc, slash, path = body.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        return cls(head, userinfo, at, hosts + slash + path, query, qmark, hash_ + fragment)


def _query_pairs(query: str) -> list[tuple[str, str, str]]:
    return [item.partition("=") for item in query.split("&")] if query else []


def url_secrets(url: str) -> list[str]:
    """The URL's passwords (in the user part, and any ``?...pass...=`` parameter) as written
    and decoded, longest first: what an error message echoing them could contain."""
    parts = _URL.cut(url)
    found: set[str] = set()
    if parts.at and ":" in parts.userinfo:
        raw = parts.userinfo.partition(":")[2]
        found |= {raw, unquote(raw)}
    for name, eq, value in _query_pairs(parts.query):
        if eq and _SECRET_PARAMETER.search(unquote_plus(name)):
            found |= {value, unquote_plus(value), unquote(value)}
    return sorted((secret for secret in found if secret), key=len, reverse=True)


def mask_url(url: str) -> str:
    """The URL with every password replaced by ``***``: in the user part (``user:pw@``, ``:pw@``,
    on every host list: cluster, Sentinel) and in ``?password=`` (or any ``...pass...``) parameters.

    The one masker for banners, errors, logs and CLI output; it never parses what it cannot
    (``unix:///path``, ``sqlite:////abs.db``, IPv6 hosts and odd netlocs pass through intact).
    """
    parts = _URL.cut(url)
    userinfo = parts.userinfo
    if parts.at and ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:{MASK}"
    query = "&".join(
        f"{name}={MASK}" if eq and _SECRET_PARAMETER.search(unquote_plus(name)) else name + eq + value
        for name, eq, value in _query_pairs(parts.query)
    )
    masked = parts.head + userinfo + parts.at + parts.rest + parts.qmark + query + parts.fragment
    return scrub(masked, secrets=url_secrets(url)) if parts.head else masked


def scrub(text: str, *urls: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (an error message, a log line) with each of ``urls`` masked and every password
    of them, and ``secrets``, replaced by ``***`` wherever it appears."""
    for url in urls:
        text = text.replace(url, mask_url(url))
    hidden = {secret for url in urls for secret in url_secrets(url)} | set(secrets)
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def hide(url: str) -> None:
    """Remember ``url``'s passwords so that every runq log line scrubs them (the formatters),
    whatever echoed them: called for each broker URL this process connects to."""
    found = url_secrets(url)
    if found:
        with _HIDDEN_LOCK:
            _HIDDEN.update(found)


def _scrub_hidden(text: str) -> str:
    return scrub(text, secrets=tuple(_HIDDEN)) if _HIDDEN else text
