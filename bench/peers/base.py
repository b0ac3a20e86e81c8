"""The interface every adapter implements, and what the tasks share."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from runq.cli.bench import SLEEP, count_completion

__all__ = ["SLEEP", "AsyncPeer", "Peer", "Variant", "count_completion", "redis_url"]

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")

# Workload kinds a worker command is asked for.
DRAIN = "drain"  # W2: 2 worker processes, the library's default concurrency
ROUND_TRIP = "rtt"  # W3: one idle worker
IO = "io"  # W4: 2 worker processes, 50-way concurrency each


def redis_url() -> str:
    """The private Redis the harness started (never a default: the shared 6379 is off limits)."""
    url = os.environ.get("BENCH_REDIS_URL")
    if not url:
        raise RuntimeError("BENCH_REDIS_URL is not set: run the benchmark through python -m bench")
    return url


@dataclass(frozen=True)
class Variant:
    """One configuration of a library: its defaults (``name=""``) or a documented faster option."""

    name: str
    settings: str  # what it changes, for RESULTS.md
    workloads: frozenset[str] = frozenset({"W1", "W1b", "W2", "W3", "W4", "W5"})
    trips: int | None = None  # W3 cap for result APIs that poll at a fixed interval
    cap: int | None = None  # W2/W4 task cap for a worker too slow to drain the full size in minutes
    env: dict[str, str] = field(default_factory=dict)  # for its worker processes


class Peer:
    """A library as the harness sees it. Producers run in the harness process."""

    name: str = ""
    dist: str = ""  # the distribution whose version RESULTS.md shows
    variants: tuple[Variant, ...] = (Variant("", "defaults"),)
    has_bulk = False

    @property
    def version(self) -> str:
        return version(self.dist)

    def worker_commands(self, variant: Variant, kind: str) -> list[list[str]]:
        """The processes to launch for a workload kind (DRAIN, ROUND_TRIP or IO)."""
        raise NotImplementedError

    def reset(self, variant: Variant) -> None:
        """Called after every FLUSHALL, before the workload's producer calls."""

    def enqueue(self, kind: str, n: int) -> None:
        """``n`` tasks of kind "noop" or "sleep", one documented enqueue call each."""
        raise NotImplementedError

    def enqueue_bulk(self, kind: str, n: int, batch: int) -> None:
        """``n`` tasks through the library's bulk API, ``batch`` per call (if ``has_bulk``)."""
        raise NotImplementedError

    def round_trips(self, variant: Variant, n: int, timeout: float) -> list[float]:
        """A warm-up round trip, then ``n`` sequential enqueue → result-wait round trips (seconds)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class AsyncPeer(Peer):
    """A peer whose producer API is async: each workload's loop runs inside one event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


def command(*parts: str) -> list[str]:
    """A console script of this venv (``celery``, ``rq``, ...) with its arguments."""
    return [str(BIN / parts[0]), *parts[1:]]
