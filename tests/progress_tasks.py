"""Tasks that report progress, run by real workers in tests/test_progress.py."""

from __future__ import annotations

import asyncio
import time

import runq

app = runq.App()  # RUNQ_URL comes from the test


@app.task(name="report")
def report(seconds: float) -> int:
    """Report as fast as it can for ``seconds`` (the writer coalesces), then 1.0 "done"."""
    calls, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        runq.current().progress(min(0.99, elapsed / seconds), f"call {calls}")
        calls += 1
    runq.current().progress(1.0, "done")
    return calls + 1


@app.task(name="areport")
async def areport(seconds: float) -> int:
    calls, start = 0, time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        runq.current().progress(min(0.99, elapsed / seconds), f"call {calls}")
        calls += 1
        if calls % 100 == 0:
            await asyncio.sleep(0)  # other coroutines (and the loop) go on meanwhile
    runq.current().progress(1.0, "done")
    return calls + 1


@app.task(name="quiet")
def quiet() -> str:
    return "no progress"
