"""Tasks that misbehave on purpose (``runq worker tests.misbehave_tasks:app``), for
tests/test_misbehaviour.py: each bad thing a task body can do, and a plain task to prove
the worker is still healthy afterwards.

``misbehave`` (and its ``async def`` twin) runs a small program given as JSON, so a
Hypothesis strategy can generate task bodies without generating code:

    {"print": [["stdout" | "stderr", text], ...],
     "fork": "none" | "exit" | "return",
     "end": ["return", value] | ["odd", kind] | ["raise", class name, message, bad_str]
          | ["exit", code] | ["hang", seconds]}

``fork`` forks before the end: the child exits at once (``"exit"``) or carries on with the
program like its parent (``"return"``); the parent reaps it either way.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import runq

app = runq.App()  # RUNQ_URL comes from the test


class BadStr(Exception):
    """An exception whose ``str()`` (and ``repr()``) raise."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ is broken")


class Unserialisable:
    """A return value JSON cannot encode."""


def _odd(kind: str) -> Any:
    """A return value that is not JSON: the attempt fails with ``TypeError``."""
    values: dict[str, Any] = {
        "nan": math.nan,
        "inf": math.inf,
        "huge_int": 10**5000,  # over Python's int-to-str digit limit
        "object": Unserialisable(),
        "set": {1, 2},
        "bytes": b"\xff",
        "surrogate": "\ud800",  # a lone surrogate: JSON escapes it, UTF-8 cannot encode it
    }
    return _deep(100_000) if kind == "deep" else values[kind]


def _deep(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _error(name: str, message: str, bad_str: bool) -> BaseException:
    if bad_str:
        return BadStr(message)
    kind = getattr(builtins, name)
    assert isinstance(kind, type) and issubclass(kind, BaseException), name
    return kind(message)


def _prelude(program: dict[str, Any]) -> None:
    for stream, text in program.get("print", []):
        print(text, file=sys.stdout if stream == "stdout" else sys.stderr, flush=True)
    fork = program.get("fork", "none")
    if fork == "none":
        return
    pid = os.fork()
    if pid == 0:
        if fork == "exit":
            os._exit(0)
        return  # the child goes on like its parent: the runner must end it, not let it settle
    os.waitpid(pid, 0)


def _end(program: dict[str, Any]) -> Any:
    kind, *rest = program["end"]
    if kind == "return":
        return rest[0]
    if kind == "odd":
        return _odd(rest[0])
    if kind == "raise":
        raise _error(*rest)
    if kind == "exit":
        sys.exit(rest[0])
    raise ValueError(f"unknown program end {kind!r}")


@app.task(name="misbehave", retries=0)
def misbehave(program: dict[str, Any]) -> Any:
    _prelude(program)
    if program["end"][0] == "hang":
        time.sleep(program["end"][1])
        return "woke up"
    return _end(program)


@app.task(name="amisbehave", retries=0)
async def amisbehave(program: dict[str, Any]) -> Any:
    _prelude(program)
    if program["end"][0] == "hang":
        await asyncio.sleep(program["end"][1])
        return "woke up"
    return _end(program)


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="mark_then_sleep", retries=0)
def mark_then_sleep(directory: str, seconds: float) -> str:
    """Marks ``started``, sleeps, marks ``ended``: whether a cancel stopped the function."""
    Path(directory, "started").touch()
    time.sleep(seconds)
    Path(directory, "ended").touch()
    return "ended"
