"""A periodic task with a time zone and arguments (``runq worker tests.cron_tasks:app --beat``),
for tests/test_cron.py: a six-field cron (seconds last) so a real beat fires it at once."""

from __future__ import annotations

from typing import Any

import runq

app = runq.App()  # RUNQ_URL comes from the test


@app.periodic(cron="* * * * * *", tz="Europe/Paris", args=["a", 1], kwargs={"flag": True}, queue="beat")
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}
