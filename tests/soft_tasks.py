"""Tasks for tests/test_soft_timeout.py and tests/test_recycling.py, run by real workers
(``runq worker tests.soft_tasks:app``).

Each soft-timeout task works in short steps (a thread-pool run sees ``SoftTimeout`` at its
next Python bytecode, so a step must end), except ``blocked``, which sleeps in one call that
only the process pool's signal interrupts.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import runq

app = runq.App()  # RUNQ_URL comes from the test
SOFT = {"soft_timeout": 0.5, "timeout": 30, "retries": 1, "backoff": 0.05, "jitter": False}


def _work(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


async def _awork(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@app.task(name="soft.caught", **SOFT)
def caught(seconds: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        _work(seconds)
    except runq.SoftTimeout:
        return {"cleaned_up_after": round(time.monotonic() - started, 2)}
    return {"finished": True}


@app.task(name="soft.uncaught", **SOFT)
def uncaught(seconds: float) -> str:
    _work(seconds)
    return "finished"


@app.task(name="soft.acaught", **SOFT)
async def acaught(seconds: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        await _awork(seconds)
    except runq.SoftTimeout:
        await asyncio.sleep(0.01)  # the coroutine goes on after its soft timeout: cleaning up may await
        return {"cleaned_up_after": round(time.monotonic() - started, 2)}
    return {"finished": True}


@app.task(name="soft.auncaught", **SOFT)
async def auncaught(seconds: float) -> str:
    await _awork(seconds)
    return "finished"


@app.task(name="soft.blocked", soft_timeout=0.5, timeout=30, retries=0)
def blocked(seconds: float) -> dict[str, Any]:
    """One long sleep: the process pool's signal interrupts it."""
    started = time.monotonic()
    try:
        time.sleep(seconds)
    except runq.SoftTimeout:
        return {"cleaned_up_after": round(time.monotonic() - started, 2)}
    return {"finished": True}


@app.task(name="soft.stubborn", soft_timeout=0.5, timeout=2, retries=0)
def stubborn(seconds: float) -> str:
    """Swallows its soft timeout and works on: the hard timeout still ends it."""
    try:
        _work(seconds)
    except runq.SoftTimeout:
        _work(seconds)
    return "finished"


@app.task(name="soft.plain", retries=0)
def plain(seconds: float) -> str:
    _work(seconds)
    return "finished"


# -- recycling -------------------------------------------------------------------------------------

_LEAK: list[bytearray] = []


@app.task(name="recycle.leak", retries=0)
def leak(mib: int) -> int:
    """Keeps ``mib`` MiB for good (touched, so it is resident): a leaky task, on purpose."""
    block = bytearray(mib * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    _LEAK.append(block)
    return os.getpid()


@app.task(name="recycle.pid", retries=0)
def pid() -> int:
    return os.getpid()


@app.task(name="recycle.sibling", retries=0)
def sibling(seconds: float) -> dict[str, Any]:
    """Says which child ran it and whether another live child of its worker appeared within
    ``seconds`` (with one slot, that can only be this child's replacement, started early)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _live_siblings():
            return {"pid": os.getpid(), "sibling": True}
        time.sleep(0.01)
    return {"pid": os.getpid(), "sibling": False}


def _live_siblings() -> list[int]:
    """Other live (not zombie) processes whose parent is this process's parent."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent = stat.rpartition(")")[2].split()[:2]
        if int(parent) == os.getppid() and state != "Z":
            found.append(int(entry.name))
    return found
