"""``tests.tasks:app`` for a worker whose wall clock is skewed with libfaketime (tests/test_skew.py).

libfaketime 0.9.10 (Debian 12) fakes the wall clock and, with ``FAKETIME_DONT_FAKE_MONOTONIC=1``,
leaves the monotonic clock alone, as wanted; but its ``clock_nanosleep`` wrapper then answers
EINVAL to the absolute monotonic sleep that ``time.sleep`` makes (Python >= 3.11). Every other
timed wait (locks, events, queues, select, socket timeouts) works, so ``time.sleep`` becomes an
event wait here. Importing this module does it, before the worker starts a thread.
"""

from __future__ import annotations

import os
import threading
import time

from tests.tasks import app

__all__ = ["app"]


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


if "faketime" in os.environ.get("LD_PRELOAD", ""):
    time.sleep = _sleep
