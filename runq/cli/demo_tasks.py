"""The tasks ``runq demo`` runs: a small shop's background work, simulated with sleeps.

They ship inside the package so ``runq worker runq.cli.demo_tasks:app`` works anywhere
runq is installed. Failures are deterministic (by attempt number or argument), so
the demo shows retries and the dead-letter set the same way every time.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from typing import Any

import runq

app = runq.App()  # the demo's workers get --url; the URL here is never used by them


class SMTPBusy(ConnectionError):
    """The mail server said 421: try again later."""


class GatewayTimeout(TimeoutError):
    """The payment provider did not answer in time."""


def _digest(*parts: Any) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


@app.task(name="demo.send_email", queue="emails", retries=3, backoff=0.2, retry_for=(ConnectionError,))
async def send_email(to: str, template: str, flaky: bool = False) -> dict[str, Any]:
    """An ``async def`` task: I/O-bound work belongs on the async pool."""
    await asyncio.sleep(random.uniform(0.08, 0.25))
    if flaky and runq.current().attempt == 1:
        raise SMTPBusy("421 4.7.0 try again later")
    return {"to": to, "template": template, "message_id": _digest(to, template)}


@app.task(name="demo.resize_image", queue="images", timeout=10)
def resize_image(image: str, sizes: list[int]) -> dict[str, Any]:
    time.sleep(random.uniform(0.1, 0.35))
    return {"image": image, "thumbnails": [f"{image.rsplit('.', 1)[0]}@{size}w.webp" for size in sizes]}


@app.task(name="demo.build_report", queue="reports", timeout=30)
def build_report(kind: str, period: str) -> dict[str, Any]:
    time.sleep(random.uniform(0.8, 1.5))
    return {"report": f"{kind}-{period}.pdf", "rows": random.randint(1_000, 50_000)}


@app.task(name="demo.charge_card", queue="payments", retries=2, backoff=0.3, retry_for=(TimeoutError,))
def charge_card(order: str, amount_cents: int, card: str, gateway_failures: int = 0) -> dict[str, Any]:
    """Fails with ``GatewayTimeout`` on its first ``gateway_failures`` attempts (retried with back-off)."""
    time.sleep(random.uniform(0.05, 0.2))
    if runq.current().attempt <= gateway_failures:
        raise GatewayTimeout(f"payment gateway did not answer for order {order}")
    return {"order": order, "charged": amount_cents, "card": card[-4:], "charge_id": _digest(order, card)}
