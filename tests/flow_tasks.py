"""Tasks for the flow-control worker tests (tests/test_flow_workers.py): each run writes its
start and end to a ledger file (``RUNQ_TEST_LEDGER``), one JSON line per event, appended whole
(``O_APPEND``), so the test can check from many worker processes what ran at the same time."""

from __future__ import annotations

import json
import os
import time

import runq

app = runq.App()


def _note(event: str, task: str, key: str) -> None:
    line = json.dumps({"event": event, "task": task, "key": key, "t": time.time(), "pid": os.getpid()}) + "\n"
    fd = os.open(os.environ["RUNQ_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(name="per_key", concurrency=runq.Limit(2, key="key"), retries=0)
def per_key(key: str, seconds: float = 0.05) -> str:
    task = runq.current().id
    _note("start", task, key)
    time.sleep(seconds)
    _note("end", task, key)
    return key


@app.task(name="serial", concurrency=1, retries=0)
def serial(seconds: float = 0.05) -> None:
    task = runq.current().id
    _note("start", task, "serial")
    time.sleep(seconds)
    _note("end", task, "serial")


@app.task(name="slow", retries=0)
def slow(seconds: float) -> None:
    task = runq.current().id
    _note("start", task, "slow")
    time.sleep(seconds)
    _note("end", task, "slow")
