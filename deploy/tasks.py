"""The tasks compose.yaml's services run (mounted at /app/tasks.py): ``runq worker tasks:app``.

A real project puts its own module here, or builds ``FROM`` runq's image and copies its code
into /app. The broker comes from ``RUNQ_URL``, which compose.yaml sets for every service.
"""

from __future__ import annotations

import time

import runq

app = runq.App()


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(queue="slow", timeout=60)
def crunch(seconds: float) -> float:
    """Something that takes a while, to watch on the dashboard."""
    started = time.monotonic()
    time.sleep(seconds)
    return time.monotonic() - started


@app.periodic(every=60)
def heartbeat() -> float:
    """Fired by the beat service once a minute, cluster-wide."""
    return time.time()
