"""Tasks for the scale-out tests (cluster faults, Sentinel, network namespaces).

``runs`` appends the task's id to a file each time it runs, so a test can count every
run (duplicates after a failover or a partition) besides every final state.
"""

from __future__ import annotations

import os
import time

import runq

app = runq.App()  # RUNQ_URL comes from the test


@app.task(name="runs")
def runs(path: str, seconds: float = 0.0) -> str:
    """Note this run (one line, one O_APPEND write: whole even with many workers), then work."""
    task_id = runq.current().id
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return task_id


@app.task(name="where")
def where(path: str, seconds: float = 0.0) -> int:
    """``runs``, answering with the pid of the process that ran it (to tell workers apart)."""
    runs(path, seconds)
    return os.getpid()


def run_counts(path: str) -> dict[str, int]:
    """How many times each task id ran, from the file ``runs`` appends to."""
    counts: dict[str, int] = {}
    if os.path.exists(path):
        with open(path) as lines:
            for line in lines:
                counts[line.strip()] = counts.get(line.strip(), 0) + 1
    return counts
