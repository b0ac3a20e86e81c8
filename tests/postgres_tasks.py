"""The task the PostgreSQL fault tests run in real worker processes: it records each run.

Each run appends ``<task id> <pid>`` to a file with one ``O_APPEND`` write (atomic for a
line this short), so a test counts the runs of every task independently of the broker.
"""

from __future__ import annotations

import os
import time

import runq

app = runq.App()  # RUNQ_URL comes from the test


@app.task(name="record")
def record(path: str, seconds: float = 0.0) -> None:
    if seconds:
        time.sleep(seconds)
    line = f"{runq.current().id} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
