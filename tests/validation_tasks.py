"""Tasks registered under their default names (``tests.validation_tasks.add``...), as in the README's
quickstart, for the by-name enqueue tests (``runq enqueue --app tests.validation_tasks:app``)."""

from __future__ import annotations

import runq

app = runq.App()  # RUNQ_URL comes from the test


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(queue="emails", priority=3, retries=5)
def send_email(to: str, subject: str = "") -> str:
    return f"{to}: {subject}"
