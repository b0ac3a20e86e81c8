"""Example tasks for the quickstart: plain functions, an async one, one that retries."""

from __future__ import annotations

import asyncio
import random

import runq

app = runq.App()  # RUNQ_URL, else sqlite:///runq.db in the current directory


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(queue="emails", retries=5, backoff=0.05)
def send_email(to: str, subject: str = "") -> str:
    if random.random() < 0.3:  # a flaky mail server: retried with back-off
        raise ConnectionError("SMTP server busy")
    return f"sent {subject!r} to {to}"


@app.task(timeout=5)
async def resize(image: str, width: int) -> dict[str, object]:
    await asyncio.sleep(0.01)
    return {"image": image, "width": width}
