"""Tasks the worker tests run in real worker processes (``runq worker tests.tasks:app``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import runq

app = runq.App()  # RUNQ_URL comes from the test


@app.task(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="echo")
def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(name="async_sleep")
async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@app.task(name="touch_then_sleep")
def touch_then_sleep(path: str, seconds: float) -> str:
    """Marks that it started (so a test can act mid-run), then works for ``seconds``."""
    Path(path).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if runq.current().cancelled:
            return "stopped"
        time.sleep(0.01)
    return "finished"


@app.task(name="pid_after", retries=0)
def pid_after(path: str, seconds: float) -> int:
    """Marks that it started, works for ``seconds``, then says which process ran it."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


@app.task(name="flaky", retries=3, backoff=0.01)
def flaky(succeed_on: int) -> int:
    attempt = runq.current().attempt
    if attempt < succeed_on:
        raise RuntimeError(f"attempt {attempt} fails")
    return attempt


@app.task(name="picky", retries=3, backoff=0.01, retry_for=(IOError,))
def picky(kind: str) -> None:
    raise (OSError if kind == "io" else ValueError)(kind)


@app.task(name="ask_retry", retries=2)
def ask_retry() -> int:
    attempt = runq.current().attempt
    if attempt < 2:
        raise runq.Retry(delay=0.05)
    return attempt


@app.task(name="bad_result")
def bad_result() -> object:
    return object()


@app.task(name="context")
def context() -> dict[str, Any]:
    info = runq.current()
    return {"id": info.id, "name": info.name, "attempt": info.attempt}


@app.task(name="crash", retries=1, backoff=0.01)
def crash() -> None:
    os._exit(13)


@app.task(name="kill_worker", retries=1)
def kill_worker() -> None:
    """A poison pill: takes its whole worker down (run it in the thread pool)."""
    os.kill(os.getpid(), signal.SIGKILL)


# -- workflows, periodic tasks, rate limits, breakers (issue 6) --------------------------------


@app.task(name="fail_always", retries=0)
def fail_always(*args: Any) -> None:
    raise RuntimeError("this step always fails")


@app.task(name="total")
def total(values: list[int], *extra: int) -> int:
    return sum(values) + sum(extra)


@app.task(name="limited", rate_limit="5/s")
def limited() -> float:
    """Rate limited across every worker: 5 starts a second."""
    return time.time()


@app.task(name="stamp")
def stamp() -> float:
    return time.time()


@app.task(name="guarded", retries=0, breaker=(2, 2.0))
def guarded(path: str) -> str:
    """Calls a 'downstream' that is down while the file at ``path`` says so."""
    state = Path(path).read_text()
    if state == "down":
        raise ConnectionError("downstream is down")
    return state


@app.periodic(every=1, name="tick", queue="beat")
def tick() -> float:
    return time.time()


# -- batches (SPEC §11) --------------------------------------------------------------------------


@app.task(name="record")
def record(value: Any, path: str, label: str) -> str:
    """Appends one JSON line per run to ``path``: a test counts runs (exactly once), not records."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"label": label, "value": value}) + "\n")
    return label
