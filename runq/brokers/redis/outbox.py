"""Flow control for the Redis broker: cross-queue workflow steps, ticks, rate limits, breakers.

A workflow step for another queue's slot (``link`` a dependent to its parent, ``resolve``
a dependent when its parent ended) is posted to the deciding queue's outbox by the
function that decided it, and returned; :meth:`Flow.apply_steps` runs it in the other
slot (a repeatable function) and only then removes it from the outbox. Steps left by a
process that died in between are handed out again by ``claim.lua``. The keys are in keys.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from runq.brokers.base import BreakerEvent
from runq.brokers.redis.keys import BREAKERS_KEY, breaker_key, done_key, function_keys, queue_keys, rate_key, tick_key
from runq.brokers.redis.scripts import Functions
from runq.models import queue_of


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Flow:
    """The flow-control half of the Redis broker, on its client and its functions."""

    def __init__(self, client: Any, functions: Functions) -> None:
        self._r = client
        self._functions = functions

    def _run(self, name: str, keys: Iterable[str], args: list[Any]) -> Any:
        return self._functions.run(name, tuple(keys), args)

    def apply_steps(self, queue: str, steps: Iterable[bytes | str]) -> None:
        """Apply outbox steps posted in ``queue``'s slot, and the steps those post, in turn."""
        todo = [(queue, _text(step)) for step in steps]
        while todo:
            source, text = todo.pop(0)
            step = json.loads(text)
            if step["op"] == "notify":  # a cancelled dependent has waiters: wake each
                child_keys = queue_keys(queue_of(step["child"]))
                waiters = int(self._r.hget(child_keys.waiters, step["child"]) or 0)
                if waiters:
                    key = done_key(step["child"])
                    pipe = self._r.pipeline(transaction=False)
                    pipe.rpush(key, *["1"] * waiters).pexpire(key, 10000).hdel(child_keys.waiters, step["child"])
                    pipe.execute()
                continue
            if step["op"] == "link":
                target = queue_of(step["parent"])
                posted = self._run("link", function_keys("link", target), [step["child"], step["parent"]])
            else:
                target = queue_of(step["child"])
                posted = self._run(
                    "resolve", function_keys("resolve", target), [step["child"], step["parent"], step["error"]]
                )
            todo.extend((target, _text(more)) for more in posted)
            self._r.zrem(queue_keys(source).outbox, text)

    def take_tick(self, name: str, tick: str, ttl: float) -> bool:
        return bool(self._r.set(tick_key(name, tick), "1", nx=True, px=max(1, int(ttl * 1000))))

    def acquire_rate(self, name: str, rate: float, per: float) -> float:
        return float(self._run("rate", [rate_key(name)], [per / rate]))

    def breaker(self, name: str, event: BreakerEvent, failures: int, seconds: float) -> float:
        hold = float(self._run("breaker", [breaker_key(name)], [event, failures, seconds]))
        if event == "failure":
            self._r.sadd(BREAKERS_KEY, name)
        return hold

    def breaker_states(self) -> dict[str, dict[str, Any]]:
        names = sorted(_text(name) for name in self._r.smembers(BREAKERS_KEY))
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(breaker_key(name), "state", "failures", "open_until")
        states: dict[str, dict[str, Any]] = {}
        for name, (state, failures, open_until) in zip(names, pipe.execute(), strict=True):
            if state is not None:
                states[name] = {"state": _text(state), "failures": int(failures), "open_until": float(open_until)}
        return states
