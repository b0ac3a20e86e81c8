"""Flow control for the Redis broker: cross-queue workflow steps, ticks, rate limits, breakers.

Kept beside ``redis.py`` (as a mixin of :class:`~runq.brokers.redis.RedisBroker`) so the
hot path stays in one small module. Keys (no queue: these belong to a task name):

    runq:rate:{<name>}         hash    tat, tail: the rate limit's GCRA state (rate.lua)
    runq:breaker:{<name>}      hash    state, failures, open_until, probe_until (breaker.lua)
    runq:breakers              set     task names that have a breaker key (for stats)
    runq:tick:{<name>}:<tick>  string  a periodic tick taken by one beat process (SET NX PX)

A workflow step for another queue's slot (``link`` a dependent to its parent, ``resolve``
a dependent when its parent ended) is posted to the deciding queue's outbox by the
script that decided it, and returned; :meth:`RedisFlow.apply_steps` runs it in the other
slot (a repeatable script) and only then removes it from the outbox. Steps left by a
process that died in between are handed out again by ``claim.lua``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from redis.commands.core import Script

from runq.brokers.base import BreakerEvent
from runq.models import queue_of

BREAKERS_KEY = "runq:breakers"


def rate_key(name: str) -> str:
    return f"runq:rate:{{{name}}}"


def breaker_key(name: str) -> str:
    return f"runq:breaker:{{{name}}}"


def tick_key(name: str, tick: str) -> str:
    return f"runq:tick:{{{name}}}:{tick}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisFlow:
    """The flow-control half of the Redis broker (needs ``_r``, ``_scripts``, ``_run``)."""

    _r: Any
    _scripts: dict[str, Script]

    def _run(self, name: str, keys: list[str] | tuple[str, ...], args: list[Any]) -> Any:
        raise NotImplementedError

    def apply_steps(self, queue: str, steps: Iterable[bytes | str]) -> None:
        """Apply outbox steps posted in ``queue``'s slot, and the steps those post, in turn."""
        from runq.brokers.redis import done_key, queue_keys

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
                posted = self._run("link", queue_keys(target), [step["child"], step["parent"]])
            else:
                target = queue_of(step["child"])
                posted = self._run("resolve", queue_keys(target), [step["child"], step["parent"], step["error"]])
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
