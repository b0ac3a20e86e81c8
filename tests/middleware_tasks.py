"""Tasks and middleware for tests/test_middleware.py, run by real workers.

Each hook appends one JSON line to the file ``RUNQ_TEST_HOOKS`` names, with the process it
ran in, so the test sees where each hook ran (a process-pool child, or the worker).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import runq

app = runq.App()


def _record(hook: str, task: runq.TaskContext, **fields: Any) -> None:
    line = {"hook": hook, "id": task.id, "name": task.name, "pid": os.getpid(), **fields}
    with open(os.environ["RUNQ_TEST_HOOKS"], "a") as out:
        out.write(json.dumps(line) + "\n")


class Recorder(runq.Middleware):
    def on_start(self, task: runq.TaskContext) -> None:
        task.notes["seen_by"] = str(os.getpid())
        _record("start", task, current=runq.current().id)

    def on_end(self, task: runq.TaskContext, error: BaseException | None) -> None:
        _record("end", task, error=type(error).__name__ if error else None)

    def on_finish(self, task: runq.TaskContext, outcome: runq.TaskOutcome) -> None:
        error = outcome.error.get("type") if outcome.error else None
        _record("finish", task, status=outcome.status, result=outcome.result, error=error, notes=task.notes)


class Broken(runq.Middleware):
    """Raises in every hook: logged, and changes nothing."""

    def on_enqueue(self, message: Any) -> None:
        raise RuntimeError("broken on_enqueue")

    def on_start(self, task: runq.TaskContext) -> None:
        raise RuntimeError("broken on_start")

    def on_end(self, task: runq.TaskContext, error: BaseException | None) -> None:
        raise RuntimeError("broken on_end")

    def on_finish(self, task: runq.TaskContext, outcome: runq.TaskOutcome) -> None:
        raise RuntimeError("broken on_finish")


app.add_middleware(Broken())
app.add_middleware(Recorder())


@app.task(name="double")
def double(x: int) -> int:
    return 2 * x


@app.task(name="adouble")
async def adouble(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@app.task(name="boom", retries=0)
def boom() -> None:
    raise ValueError("boom")


def _hook(kind: str) -> Any:
    def hook(task: runq.TaskContext, outcome: runq.TaskOutcome) -> None:
        _record(kind, task, status=outcome.status, attempt=task.attempt)

    return hook


def _raising_hook(task: runq.TaskContext, outcome: runq.TaskOutcome) -> None:
    raise RuntimeError("broken on_success hook")


@app.task(name="hooked", retries=1, on_success=_hook("on_success"), on_failure=_hook("on_failure"))
def hooked(fail_times: int) -> str:
    if runq.current().attempt <= fail_times:
        raise ValueError("not yet")
    return "done"


@app.task(name="badly_hooked", on_success=_raising_hook)
def badly_hooked() -> int:
    return 7
