"""The one rulebook for what a task call may say: its name, its queue and every option.

The Python API (``@app.task``, ``.options()``, ``app.enqueue``), the CLI (``runq enqueue``,
``runq worker --queues``, ``runq purge``) and the HTTP API (``POST /api/tasks``, ``/api/purge``)
all call these functions, so they accept and refuse exactly the same values (SPEC §8).
Each check returns the clean value or raises ``TypeError`` (wrong kind of value) or
``ValueError`` (right kind, out of bounds), with a message that names the option.

The limits, stated once (the README's "Limits" table repeats them):

- task name: 1-200 characters, not blank, no surrounding whitespace, no control or
  invisible formatting characters (ESC, NUL, bidi overrides, line separators...);
- queue name: 1-64 of ``A-Z a-z 0-9 _ . -`` (queue names are part of task ids and keys);
- ``key``: 1-512 characters, no control or invisible formatting characters;
- ``priority``: an int from -100 to 100;
- ``delay`` and every other duration (``backoff``, ``backoff_max``, ``timeout``,
  ``result_ttl``): a finite number of seconds, at most 10 years; ``eta``: an aware
  datetime at most 10 years ahead (a past one means now);
- ``soft_timeout``: a duration > 0, less than ``timeout`` when both are set (at the call
  or by the task's decorator);
- progress (``runq.current().progress()``): a ``value`` from 0.0 to 1.0, a ``message`` of
  1-1000 characters without control characters;
- ``retries``: an int from 0 to 10,000; ``jitter``: a bool; ``rate_limit``: ``"N/s"``,
  ``"N/m"`` or ``"N/h"``;
- flow control (SPEC §9): ``expires`` a duration (or an aware datetime, Python only; a
  task whose eta comes after it never runs: it ends ``Expired``); ``debounce`` a duration > 0
  that needs a ``key`` and sets the eta itself (no ``delay``, ``eta`` or ``after`` beside
  it); ``concurrency`` an int from 1 to 10,000, or
  ``Limit(N, key="arg")`` (CLI and HTTP: ``"N"`` or ``"N:arg"``; HTTP also
  ``{"runs": N, "key": "arg"}``), whose ``arg`` must be an argument of the call.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import json
import math
import re
import sys
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from runq.models import FINAL_STATUSES, QUEUE_NAME, Status

MAX_NAME = 200
MAX_KEY = 512
MAX_PROGRESS_MESSAGE = 1000
PRIORITY_MIN, PRIORITY_MAX = -100, 100
MAX_RETRIES = 10_000
MAX_SECONDS = 10 * 365 * 86400  # 315,360,000 s: the longest delay, eta ahead, or duration
MAX_CONCURRENCY = 10_000
MAX_SLOT = 256  # a concurrency slot's name; a longer one (a big argument value) is hashed
CONCURRENCY_TEXT = re.compile(r"^\s*(\d+)\s*(?::\s*([A-Za-z_][A-Za-z0-9_]*)\s*)?$")
RATE_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")
# Unicode categories refused in names and keys: controls (Cc: NUL, ESC...), invisible
# formatting (Cf: bidi overrides, zero-width joiners), lone surrogates (Cs: not encodable)
# and line/paragraph separators (Zl, Zp). Each one can make a name print as another.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


@functools.cache
def hidden_class() -> str:
    """The refused characters as the body of a regex class, for the HTTP API's JSON Schema
    (built once, on first use: it scans every code point, ~0.1 s). Lone surrogates are left
    out: no regex engine but Python's can name them (the check refuses them all the same)."""
    ranges: list[list[int]] = []
    for point in range(sys.maxunicode + 1):
        if unicodedata.category(chr(point)) in _HIDDEN - {"Cs"}:
            if ranges and ranges[-1][1] == point - 1:
                ranges[-1][1] = point
            else:
                ranges.append([point, point])
    return "".join(_escaped(a) if a == b else f"{_escaped(a)}-{_escaped(b)}" for a, b in ranges)


def _escaped(point: int) -> str:
    # \uXXXX reads the same in Python's and ECMAScript's regexes; a character beyond the BMP is
    # written as itself (ECMAScript has no escape for it without the ``u`` flag).
    return f"\\u{point:04x}" if point <= 0xFFFF else chr(point)


def name_schema() -> dict[str, Any]:
    """JSON Schema of a task name (what :func:`check_task_name` accepts), for OpenAPI."""
    hidden = hidden_class()
    return {"minLength": 1, "maxLength": MAX_NAME, "pattern": f"^[^\\s{hidden}](?:[^{hidden}]*[^\\s{hidden}])?$"}


def key_schema() -> dict[str, Any]:
    return {"minLength": 1, "maxLength": MAX_KEY, "pattern": f"^[^{hidden_class()}]*$"}


def _hidden_character(text: str) -> str | None:
    for char in text:
        if unicodedata.category(char) in _HIDDEN:
            return char
    return None


def visible(text: str, keep: str = "") -> str:
    """``text`` safe to print: each character the rules refuse in a name (controls, invisible
    formatting, line separators, lone surrogates; those in ``keep`` aside) becomes its JSON
    escape (``\\u001b``), so a terminal shows it rather than obeys it, and UTF-8 can encode it.
    Used on every human read path: a broker may hold such text (a task's result or error, a
    name written by an older runq). On JSON text it is lossless: the escape is JSON's own."""
    if text.isprintable():  # fast path: every refused character is unprintable
        return text
    out = []
    for char in text:
        if char in keep or unicodedata.category(char) not in _HIDDEN:
            out.append(char)
            continue
        point = ord(char)
        if point > 0xFFFF:  # as JSON writes it: a surrogate pair
            point -= 0x10000
            out.append(f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}")
        else:
            out.append(f"\\u{point:04x}")
    return "".join(out)


def _text(what: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{what} must be at most {limit} characters, got {len(value)}")
    hidden = _hidden_character(value)
    if hidden is not None:
        raise ValueError(f"{what} must not contain control characters, got {hidden!r} in {value[:60]!r}")
    return value


def _shown(number: int | float) -> str:
    """A number for an error message, short even for a 10**5000 int (``str`` of that raises)."""
    if isinstance(number, float):
        return f"{number:g}"
    return str(number) if abs(number) < 10**30 else f"{'-' if number < 0 else ''}a {number.bit_length()}-bit number"


def check_task_name(name: Any) -> str:
    """A task name: 1-200 characters, printable, without surrounding whitespace."""
    _text("task name", name, MAX_NAME)
    if name != name.strip():
        raise ValueError(f"task name must not start or end with whitespace, got {name!r}")
    return str(name)


def check_queue(queue: Any) -> str:
    if not isinstance(queue, str):
        raise TypeError(f"queue must be a string, got {type(queue).__name__}")
    if not QUEUE_NAME.match(queue):
        raise ValueError(f"invalid queue name {queue[:80]!r}: use 1-64 characters from A-Z a-z 0-9 _ . -")
    return queue


def parse_queues(text: str) -> tuple[str, ...]:
    """``"high, default"`` (``--queues`` / ``RUNQ_QUEUES``) → ``("high", "default")``; every item
    must be a queue name ``enqueue`` accepts, and at least one is needed."""
    items = tuple(item.strip() for item in text.split(","))
    if not any(items):
        raise ValueError(f"queues must name at least one queue, got {text!r}")
    for item in items:
        if not item:
            raise ValueError(f"queues has an empty item: {text!r}")
        check_queue(item)
    return items


def check_key(key: Any) -> str:
    return _text("key", key, MAX_KEY)


def check_priority(priority: Any) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TypeError(f"priority must be an int, got {type(priority).__name__}")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {_shown(priority)}")
    return priority


def check_progress(value: Any, message: Any) -> tuple[float | None, str | None]:
    """A progress report: ``value`` a number from 0.0 to 1.0 (or ``None``), ``message`` a short
    printable string (or ``None``)."""
    if value is not None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"progress value must be a number from 0.0 to 1.0, got {type(value).__name__}")
        if not 0.0 <= value <= 1.0:  # also refuses NaN
            raise ValueError(f"progress value must be from 0.0 to 1.0, got {_shown(value)}")
        value = float(value)
    if message is not None:
        message = _text("progress message", message, MAX_PROGRESS_MESSAGE)
    return value, message


def check_seconds(name: str, value: Any, *, zero: bool = True) -> float:
    """A duration: a finite number of seconds, ``>= 0`` (``> 0`` unless ``zero``), at most 10 years."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value}")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be {'>=' if zero else '>'} 0 seconds, got {_shown(value)}")
    if value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most 10 years ({MAX_SECONDS} seconds), got {_shown(value)}")
    return float(value)


def check_soft_timeout(soft_timeout: Any, timeout: float | None = None) -> float:
    """A soft time limit: a duration > 0 that must leave the task time before its hard ``timeout``
    (a soft limit at or after the hard one could never be seen)."""
    seconds = check_seconds("soft_timeout", soft_timeout, zero=False)
    if timeout is not None and seconds >= timeout:
        raise ValueError(
            f"soft_timeout ({_shown(soft_timeout)}s) must be less than timeout ({_shown(timeout)}s):"
            " the hard timeout stops the task first"
        )
    return seconds


def check_delay(delay: Any) -> float:
    return check_seconds("delay", delay)


def check_eta(eta: Any, now: datetime | None = None) -> datetime:
    """An aware datetime at most 10 years ahead; a past one means "now"."""
    if not isinstance(eta, datetime):
        raise TypeError(f"eta must be a datetime, got {type(eta).__name__}")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise ValueError("eta must be timezone-aware (e.g. datetime.now(timezone.utc))")
    now = now or datetime.now(timezone.utc)
    if eta - now > timedelta(seconds=MAX_SECONDS):
        raise ValueError(f"eta must be at most 10 years ahead, got {eta.isoformat()}")
    return eta


def check_retries(retries: Any) -> int:
    if not isinstance(retries, int) or isinstance(retries, bool):
        raise TypeError(f"retries must be an int, got {type(retries).__name__}")
    if not 0 <= retries <= MAX_RETRIES:
        raise ValueError(f"retries must be between 0 and {MAX_RETRIES}, got {_shown(retries)}")
    return retries


def check_jitter(jitter: Any) -> bool:
    if not isinstance(jitter, bool):
        raise TypeError(f"jitter must be True or False, got {type(jitter).__name__}")
    return jitter


def parse_rate_limit(text: Any) -> tuple[float, float]:
    """``"100/s"`` → (100 tokens, per 1 second); ``ValueError`` for anything else."""
    match = RATE_LIMIT.match(text) if isinstance(text, str) else None
    if not match or not 0 < float(match.group(1)) < math.inf:
        raise ValueError(f"rate_limit must look like '10/s', '100/m' or '1000/h', got {text!r}")
    return float(match.group(1)), {"s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2)]


# -- flow control (SPEC §9) ---------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    """``concurrency=runq.Limit(8, key="user_id")``: at most ``runs`` runs at once per value of
    the task's ``user_id`` argument, across every worker; ``key=None`` counts every run of the task."""

    runs: int
    key: str | None = None

    def __post_init__(self) -> None:
        _check_runs(self.runs)
        if self.key is not None and (not isinstance(self.key, str) or not self.key.isidentifier()):
            raise ValueError(f"concurrency key must name an argument of the task, got {self.key!r}")


def _check_runs(runs: Any) -> int:
    if not isinstance(runs, int) or isinstance(runs, bool):
        raise TypeError(f"concurrency must be an int or runq.Limit, got {type(runs).__name__}")
    if not 1 <= runs <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {_shown(runs)}")
    return runs


def check_concurrency(value: Any) -> Limit:
    """``N``, ``runq.Limit(N, key=...)``, the text ``"N"`` / ``"N:arg"`` (CLI, HTTP) or the
    object ``{"runs": N, "key": "arg"}`` (HTTP), as a :class:`Limit`."""
    if isinstance(value, Limit):
        return value
    if isinstance(value, str):
        match = CONCURRENCY_TEXT.match(value)
        if not match:
            raise ValueError(f"concurrency must look like '8' or '8:user_id' (at most 8 per user_id), got {value!r}")
        return Limit(_check_runs(int(match.group(1))), match.group(2))
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"runs", "key"})
        if unknown or "runs" not in value:
            raise ValueError(f"concurrency as an object takes 'runs' and optionally 'key', got {sorted(value)}")
        return Limit(_check_runs(value["runs"]), value.get("key"))
    return Limit(_check_runs(value))


def check_expires(expires: Any, now: datetime | None = None) -> float:
    """Seconds from now until the task expires: a duration, or an aware datetime (a past one
    means now: the task expires before any worker can start it)."""
    if isinstance(expires, datetime):
        if expires.tzinfo is None or expires.utcoffset() is None:
            raise ValueError("expires must be timezone-aware (e.g. datetime.now(timezone.utc) + timedelta(hours=1))")
        seconds = (expires - (now or datetime.now(timezone.utc))).total_seconds()
        return check_seconds("expires", max(0.0, seconds))
    return check_seconds("expires", expires)


def check_debounce(debounce: Any) -> float:
    return check_seconds("debounce", debounce, zero=False)


def check_flow(*, key: str | None, delay: bool, after: bool, expires: float | None, debounce: float | None) -> None:
    """The rules between flow options: ``debounce`` moves the eta itself and works on a key."""
    if debounce is not None:
        if key is None:
            raise ValueError("debounce needs a key: the enqueues it merges are those with the same key")
        if delay:
            raise ValueError("debounce sets the eta (now + debounce): give debounce or delay/eta, not both")
        if after:
            raise ValueError("debounce cannot be combined with after (a waiting task has no eta to move)")


_LEADING = object()  # a workflow step's parent result: not known at enqueue


def limit_slot(
    name: str,
    limit: Limit,
    args: list[Any],
    kwargs: Mapping[str, Any],
    signature: inspect.Signature | None,
    leading: int = 0,
) -> str:
    """What a concurrency limit counts: the task's name, or its name and the value of the
    limit's key argument (found by keyword, else through the task's signature)."""
    if limit.key is None:
        return name
    if limit.key in kwargs:
        value = kwargs[limit.key]
    else:
        if signature is None:
            raise ValueError(
                f"concurrency key {limit.key!r}: the call passes no keyword argument {limit.key!r}"
                " (pass it by keyword, or enqueue through an App that registers the task)"
            )
        bound = signature.bind_partial(*([_LEADING] * leading), *args, **kwargs)
        bound.apply_defaults()
        if limit.key not in bound.arguments or bound.arguments[limit.key] is _LEADING:
            raise ValueError(f"concurrency key {limit.key!r} is not an argument this call gives task {name!r}")
        value = bound.arguments[limit.key]
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"concurrency key {limit.key!r} must be JSON-serialisable: {exc}") from None
    slot = f"{name}\x1f{limit.key}={text}"
    if len(slot) > MAX_SLOT:
        slot = f"{name[:100]}\x1f#{hashlib.sha256(slot.encode()).hexdigest()}"  # the whole text hashed
    return slot


def check_purge_status(status: Status | str | None) -> Status | None:
    """What ``purge`` may delete: one final state, or ``None`` for all three. Never a task
    that may still run: pending, scheduled, waiting and running tasks are not purged."""
    if status is None:
        return None
    try:
        chosen = Status(status)
    except ValueError:
        chosen = None
    if chosen is None or chosen not in FINAL_STATUSES:
        finals = ", ".join(sorted(s.value for s in FINAL_STATUSES))
        raise ValueError(f"purge deletes finished tasks only: status must be one of {finals} (or all), got {status!r}")
    return chosen


def suggest(name: str, known: Iterable[str]) -> list[str]:
    """Registered names close to ``name``: those ending in ``.name`` (``add`` → ``tasks.add``),
    then difflib's closest, best first."""
    names = sorted(set(known))
    ending = [k for k in names if k.endswith("." + name) or name.endswith("." + k)]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return list(dict.fromkeys([*ending, *close]))[:3]


def unknown_name(name: str, known: Iterable[str], where: str) -> str:
    """The message for a task name nobody registered ``where`` (with the close ones)."""
    names = list(known)
    close = suggest(name, names)
    hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
    return f"no task named {name!r} is registered {where}{hint}"
