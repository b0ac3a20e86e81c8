"""The production broker: Redis or Valkey >= 6.2 (and Redis Cluster), via redis-py.

Every state change is one function of the runq Functions library (scripts.py: loaded
once with ``FUNCTION LOAD``, called with ``FCALL``; ``EVALSHA`` scripts on Redis < 7), run
atomically on the server. Each gets its keys through KEYS, only the ones it needs
(keys.py, the one definition of the layout), all with the hash tag ``{queue}``, so a call
touches exactly one cluster slot. Task ids carry their queue, so a call that has only
an id still finds the slot. All times come from Redis ``TIME`` inside the functions:
callers pass durations, and nothing reads ``TIME`` on its own (on a cluster it has no node).

Per-task data lives in per-queue hashes rather than one hash per task because
``claim`` picks its tasks inside the function: a per-task key would have to be
built in Lua, which Redis Cluster forbids. Finished tasks are deleted by the
functions once their ``result_ttl`` passes (``expiring``), a few hundred per call.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import heapq
import itertools
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runq.brokers.base import BreakerEvent, Broker
from runq.brokers.feed import Feed
from runq.brokers.redis import connection
from runq.brokers.redis.connection import UNAVAILABLE, unavailable
from runq.brokers.redis.events import ThreadEvents
from runq.brokers.redis.keys import (
    BREAKERS_KEY,
    PAUSED_KEY,
    QUEUES_KEY,
    WORKERS_KEY,
    breaker_key,
    done_key,
    function_keys,
    idempotency_key,
    metrics_key,
    queue_keys,
    worker_key,
)
from runq.brokers.redis.outbox import Flow
from runq.brokers.redis.scripts import Call, Functions
from runq.brokers.redis.waits import BLOCK_SLICE, CLUSTER_SLICE, INTERRUPT_SLICE, ThreadWaits, ceil_ms, info_of
from runq.brokers.rules import CANCELLED, breaker_event
from runq.logs import mask_url
from runq.models import (
    COUNTERS,
    FINAL_STATUSES,
    Claim,
    Message,
    Outcome,
    Percentiles,
    ProgressReport,
    QueueStats,
    Stats,
    Status,
    TaskInfo,
    WorkerInfo,
    queue_of,
)

log = logging.getLogger("runq.broker")
P = ParamSpec("P")
T = TypeVar("T")

STATUSES = tuple(Status)
BATCH = 200  # tasks promoted, reclaimed or expired per claim, purged per purge call
REGISTER_EVERY = 10.0


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", errors="replace")


def _str(value: bytes | str | None) -> str:
    return _text(value) or ""


def _guarded(method: Callable[P, T]) -> Callable[P, T]:
    """Turn redis-py's connection failures into ``BrokerUnavailable`` naming the (masked) URL."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except UNAVAILABLE as exc:
            broker: RedisBroker = args[0]  # type: ignore[assignment]
            error = unavailable(broker.url, exc)
            if error is exc:
                raise
            raise error from exc

    return call


class RedisBroker(Broker):
    """The Broker on Redis: thread-safe (redis-py pools connections per client).

    Blocking calls (BLPOP in ``wait_for_work`` and ``wait``) use their own client, so
    they never hold a connection another thread needs, and block at most
    ``BLOCK_SLICE`` at a time; every ``wait`` of the process shares one (waits.py).
    redis-py's automatic retry is off: a script that timed out may have run, and
    running it again could enqueue twice; an outage surfaces as ``BrokerUnavailable``
    and the worker's own back-off retries. The eviction-policy warning is given on the
    first ``claim``, which only workers make.
    """

    kind = "redis"

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.target = connection.parse(url)
        self.cluster = self.target.cluster
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),  # a script must never run twice; the caller decides
        }
        timeout = max(connect_timeout, 5.0) + (self.target.wait_timeout_ms / 1000 if self.target.wait_replicas else 0)
        self._r = self._client(options | {"socket_timeout": timeout})
        self._blocking = self._client(options | {"socket_timeout": timeout + BLOCK_SLICE})
        self.functions = Functions(self._r, self.cluster)
        self._blocking_functions = Functions(self._blocking, self.cluster)
        self._interrupted = False  # see interrupt()
        self._waiting: set[int] = set()  # CLIENT IDs of this broker's BLPOPs in progress
        self._waiting_lock = threading.Lock()
        self.flow = Flow(self._r, self.functions)
        self._policy_checked = False
        self._registered: dict[str, float] = {}  # queue -> when this process last added it to QUEUES_KEY
        self._waits = ThreadWaits(self)
        self._events = ThreadEvents(self, self.target)

    def _client(self, options: dict[str, Any]) -> Any:
        """A client for the URL (one Redis, a cluster, or the master Sentinel names: connection.py)."""
        try:
            return connection.client(self.target, options)
        except UNAVAILABLE as exc:
            raise unavailable(self.url, exc) from exc

    def _replicate(self, queues: Iterable[str], lane: bool, strict: bool) -> None:
        """``?wait_replicas=N``: ``WAIT`` until N replicas hold this connection's writes (connection.py)."""
        if self.target.wait_replicas:
            wait = connection.Replication(self.target, self._r, self.functions)
            wait.wait([queue_keys(queue).pending for queue in queues], lane, strict, self.url)

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.functions.run(name, keys, args)

    def _check_policy(self) -> None:
        """Warn once when Redis may evict keys: an evicted task is a lost task."""
        try:
            policy = _text(next(iter(self._r.config_get("maxmemory-policy").values()), None))
        except (redis.ConnectionError, redis.TimeoutError):
            return  # try again on the next claim
        except redis.RedisError as exc:  # CONFIG forbidden (ACL, managed Redis): nothing to learn
            log.debug("cannot read maxmemory-policy: %s", exc)
            policy = None
        self._policy_checked = True
        if policy not in (None, "noeviction"):
            log.warning(
                "Redis at %s has maxmemory-policy %s: it may evict tasks under memory pressure;"
                " set maxmemory-policy noeviction",
                mask_url(self.url),
                policy,
            )

    # -- producing ----------------------------------------------------------------

    @_guarded
    def enqueue(self, messages: Sequence[Message], key_ttl: float) -> list[str]:
        groups, calls, commands = self.enqueue_plan(messages, key_ttl)
        if not groups:
            return []
        results = self.functions.batch(calls, commands, atomic=len(groups) > 1)
        ids: list[str] = [""] * len(messages)
        for (queue, indexes), returned in zip(groups.items(), results[: len(groups)], strict=True):
            for i, task_id in zip(indexes, returned, strict=False):  # stops at the ids
                ids[i] = _str(task_id)
            if len(returned) > len(indexes):  # steps posted for parents in other queues
                self.apply_steps(queue, returned[len(indexes) :])
        self._replicate(groups, lane=len(groups) == 1, strict=True)
        return ids

    def enqueue_plan(
        self, messages: Sequence[Message], key_ttl: float
    ) -> tuple[dict[str, list[int]], list[Call], list[tuple[Any, ...]]]:
        """The messages' indexes by queue, one enqueue call per queue, and the ``SADD`` of
        queues not registered lately: what the sync and the asyncio enqueue both send."""
        groups: dict[str, list[int]] = {}
        for i, message in enumerate(messages):
            groups.setdefault(message.queue, []).append(i)
        calls = [
            self._enqueue_call(queue, [messages[i] for i in indexes], key_ttl) for queue, indexes in groups.items()
        ]
        unregistered = self._unregistered(groups)
        commands: list[tuple[Any, ...]] = [("SADD", QUEUES_KEY, *unregistered)] if unregistered else []
        return groups, calls, commands

    @staticmethod
    def _enqueue_call(queue: str, messages: Sequence[Message], key_ttl: float) -> Call:
        """Ready tasks only (no delay, no ``after``, no flow options): the 7 keys that needs, else all."""
        flows = [_flow_arg(m) for m in messages]
        ready = all(m.delay <= 0 and not m.after and not flow for m, flow in zip(messages, flows, strict=True))
        name = "enqueue_ready" if ready else "enqueue"
        keys: list[str] = list(function_keys(name, queue))
        args: list[Any] = [max(1, int(key_ttl * 1000))]
        for m, flow in zip(messages, flows, strict=True):
            if m.key is not None:
                keys.append(idempotency_key(queue, m.key))
            after = "" if not m.after else json.dumps({"final": m.after} if m.after_final else m.after)
            args += [m.id, m.payload, m.priority, m.delay, m.result_ttl, int(m.key is not None), after, flow]
        return Call(name, keys, args)

    def _unregistered(self, queues: Iterable[str]) -> list[str]:
        """Queues to (re-)add to the set of known queues: once per process, then every
        ``REGISTER_EVERY`` seconds in case the set was lost (a Redis restart without AOF)."""
        now = time.monotonic()
        stale = [q for q in queues if now - self._registered.get(q, -math.inf) > REGISTER_EVERY]
        for queue in stale:
            self._registered[queue] = now
        return stale

    # -- consuming ----------------------------------------------------------------

    @_guarded
    def claim(self, queues: Sequence[str], worker_id: str, limit: int, lease: float) -> list[Claim]:
        """One script call per queue, in order, until ``limit`` tasks are taken; the queues left
        then get theirs with limit 0, in one round trip: every queue of a claim is kept (due
        tasks made pending, lost leases taken back, deadlines applied), as on every broker."""
        if not self._policy_checked:
            self._check_policy()
        claims: list[Claim] = []
        for i, queue in enumerate(queues):
            if len(claims) >= limit:
                calls = [Call("claim", function_keys("claim", q), [worker_id, 0, lease, "", BATCH]) for q in queues[i:]]
                for left, answers in zip(queues[i:], self.functions.batch(calls), strict=True):
                    self.apply_steps(left, answers)  # (outbox steps only: it took nothing)
                break
            prefix = secrets.token_hex(8) + ":"
            args = [worker_id, limit - len(claims), lease, prefix, BATCH]
            for answer in self._run("claim", function_keys("claim", queue), args):
                if not isinstance(answer, list):  # an outbox step a dead process left behind
                    self.apply_steps(queue, [answer])
                    continue
                task_id, payload, attempt, token = answer
                claims.append(Claim(_str(task_id), queue, _text(payload) or "", int(attempt), _text(token) or ""))
        return claims

    @_guarded
    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Block on the queues' wake lists until work arrives, the next due time, or ``timeout``."""
        if self._interrupted:  # its worker is stopping: not even the due-time round trip
            return
        calls = [Call("due", function_keys("due", queue), ()) for queue in queues]
        due = min((float(d) for d in self.functions.batch(calls) if float(d) >= 0), default=math.inf)
        wait = min(timeout, due, BLOCK_SLICE)
        if wait <= 0.001:
            return
        wake_keys = [queue_keys(queue).wake for queue in queues]
        if not self.cluster:
            client_id = self._blocking_functions.client_id()
            if client_id is not None:
                with self._waiting_lock:
                    self._waiting.add(client_id)
            try:
                if self._interrupted:  # interrupt() may have run before this wait could be unblocked
                    return
                (reply,) = self._blocking_functions.send([("BLPOP", *wake_keys, ceil_ms(wait))])
            finally:
                if client_id is not None:
                    with self._waiting_lock:
                        self._waiting.discard(client_id)
            if isinstance(reply, Exception):
                raise reply
            return
        # Cluster: a BLPOP reaches one slot (the wake lists of several queues live in different
        # ones), and its connection is the cluster client's: waits go in slices, and interrupt()
        # is seen between them.
        deadline = time.monotonic() + wait
        one = len(wake_keys) == 1
        for key in _cycle(wake_keys):
            block = min(INTERRUPT_SLICE, max(0.0, deadline - time.monotonic())) if one else CLUSTER_SLICE
            if self._blocking.blpop([key], ceil_ms(block)) is not None or self._interrupted:
                return
            if time.monotonic() >= deadline:
                return

    def interrupt(self) -> None:
        """Unblock this broker's waits now (``CLIENT UNBLOCK``: the BLPOP answers as at its
        timeout). A cluster's wait ends at the end of its slice (``INTERRUPT_SLICE`` at most)."""
        self._interrupted = True
        with self._waiting_lock:
            waiting = list(self._waiting)
        for client_id in waiting:
            with contextlib.suppress(redis.RedisError):  # an ACL refuses it, or the server is gone: the timeout ends it
                self._r.execute_command("CLIENT", "UNBLOCK", client_id)

    @_guarded
    def renew(self, claims: Sequence[Claim], lease: float) -> list[bool]:
        return self._per_queue("renew", claims, lambda c: [c.id, c.token], [lease], with_done=False)

    @_guarded
    def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """The settle of each queue and, in the same round trip, the breaker event of each
        outcome that carries one (breaker.lua: a repeat, by its token, counts once). Sent
        together, a breaker event cannot wait for its settle's answer: a late outcome's run
        counts, as on every broker (see Broker.settle)."""
        breakers = [(o, event) for o in outcomes if (event := breaker_event(o)) is not None]
        extra = [
            Call("breaker", [breaker_key(o.breaker.name)], [event, o.breaker.failures, o.breaker.seconds, o.token])
            for o, event in breakers
            if o.breaker is not None
        ]
        failing = sorted({o.breaker.name for o, event in breakers if o.breaker is not None and event == "failure"})
        commands: list[tuple[Any, ...]] = [("SADD", BREAKERS_KEY, *failing)] if failing else []
        answers = self._per_queue("settle", outcomes, _outcome_args, [], True, extra, commands)
        if self.target.wait_replicas:  # (checked here: no work on the hot path without it)
            self._replicate({queue_of(o.id) for o in outcomes}, lane=True, strict=False)
        return answers

    def _per_queue(
        self,
        name: str,
        items: Sequence[Claim | Outcome | ProgressReport],
        item_args: Callable[[Any], list[Any]],
        head: list[Any],
        with_done: bool,
        extra: Sequence[Call] = (),
        commands: Sequence[tuple[Any, ...]] = (),
    ) -> list[bool]:
        """One function call per queue, then ``extra`` calls and plain ``commands``, in one round
        trip (per node on a cluster); the per-queue answers in input order."""
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(queue_of(item.id), []).append(i)
        calls = []
        for queue, indexes in groups.items():
            keys = list(function_keys(name, queue))
            args = list(head)
            for i in indexes:
                args += item_args(items[i])
                if with_done:
                    keys.append(done_key(items[i].id))
            calls.append(Call(name, keys, args))
        answers = [False] * len(items)
        replies = self.functions.batch([*calls, *extra], commands) if calls else []
        for (queue, indexes), returned in zip(groups.items(), replies[: len(calls)], strict=True):
            for i, ok in zip(indexes, returned, strict=False):  # stops at the answers
                answers[i] = bool(ok)
                if ok == 2:  # settle.lua: a repeat of an applied outcome (the first reply was lost)
                    log.debug("the outcome of %s was applied already (a settle sent again)", items[i].id)
            if len(returned) > len(indexes):  # settle: steps for dependents (outbox.py)
                self.apply_steps(queue, returned[len(indexes) :])
        return answers

    # -- progress and events (follow.lua, progress.lua, events.py) ------------------

    @_guarded
    def progress(self, reports: Sequence[ProgressReport]) -> list[bool]:
        return self._per_queue("progress", reports, _progress_args, [], with_done=False)

    @_guarded
    def follow(self, task_id: str) -> Feed:
        """Subscribed to the task's channel (shared by the process: events.py), then read."""
        return self._events.follow(task_id)

    # -- inspecting and steering --------------------------------------------------

    @_guarded
    def get(self, task_id: str) -> TaskInfo | None:
        return info_of(task_id, self._run("watch", function_keys("watch", queue_of(task_id)), [task_id, 0]))

    @_guarded
    def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        """Block until the task is final or ``timeout`` passes, on the connection every waiting
        thread of this process shares (waits.py); the wake-up carries the final state."""
        if timeout <= 0:
            return self.get(task_id)
        return self._waits.wait(task_id, timeout)

    @_guarded
    def cancel(self, task_id: str) -> bool:
        keys = [*function_keys("cancel", queue_of(task_id)), done_key(task_id)]
        done, *steps = self._run("cancel", keys, [task_id, CANCELLED])
        self.apply_steps(queue_of(task_id), steps)
        return bool(done)

    @_guarded
    def retry(self, task_id: str) -> bool:
        return bool(self._run("retry", function_keys("retry", queue_of(task_id)), [task_id]))

    def _queues(self, queue: str | None) -> list[str]:
        if queue is not None:
            return [queue]
        return sorted(_str(name) for name in self._r.smembers(QUEUES_KEY))

    @_guarded
    def list(self, status: Status | None, queue: str | None, limit: int) -> list[TaskInfo]:
        """Newest first: each queue's newest ``limit`` in enqueue order (list.lua), the queues
        merged by the creation time their ids carry (the one order two slots share)."""
        queues = self._queues(queue)
        if not queues or limit <= 0:
            return []
        statuses = [s.value for s in (STATUSES if status is None else (status,))]
        calls = [Call("list", function_keys("list", name), [limit, *statuses]) for name in queues]
        found = [[(_str(entry[0]), entry[1:]) for entry in listed] for listed in self.functions.batch(calls)]
        merged = heapq.merge(*found, key=lambda hit: hit[0].rpartition(".")[2], reverse=True)
        return [info for task_id, answer in itertools.islice(merged, limit) if (info := info_of(task_id, answer))]

    @_guarded
    def purge(self, status: Status | None, queue: str | None) -> int:
        if status is Status.RUNNING:
            raise ValueError("running tasks cannot be purged: cancel them first")
        statuses = [s.value for s in (FINAL_STATUSES if status is None else (status,))]
        removed = 0
        for name in self._queues(queue):
            while True:
                count, live = self._run("purge", function_keys("purge", name), [BATCH, *statuses])
                removed += int(live)  # one past its result_ttl was gone already
                if int(count) < BATCH:
                    break
        return removed

    @_guarded
    def stats(self) -> Stats:
        queues = self._queues(None)
        calls = [Call("trim", function_keys("trim", name), [BATCH * 5]) for name in queues]
        commands: list[tuple[Any, ...]] = []
        for name in queues:
            keys = queue_keys(name)
            commands += [("ZCARD", keys.by_status(s)) for s in STATUSES]
            commands += [("HGETALL", keys.counters), ("LRANGE", keys.samples, 0, -1), ("HGETALL", keys.throughput)]
        results = self.functions.batch(calls, commands) if queues else []
        now = max((float(trimmed[1]) for trimmed in results[: len(queues)]), default=0.0)  # the Redis clock
        stats = _stats(queues, results[len(queues) :], now)
        stats.breakers.update(self.flow.breaker_states())
        return stats

    @_guarded
    def take_tick(self, name: str, tick: str, ttl: float) -> bool:
        return self.flow.take_tick(name, tick, ttl)

    @_guarded
    def acquire_rate(self, name: str, rate: float, per: float) -> float:
        return self.flow.acquire_rate(name, rate, per)

    @_guarded
    def breaker(self, name: str, event: BreakerEvent, failures: int, seconds: float) -> float:
        return self.flow.breaker(name, event, failures, seconds)

    @_guarded
    def pause(self, queue: str, paused: bool) -> bool:
        """The queue's own key decides (claim.lua reads it); ``runq:paused`` lists the paused
        queues for :meth:`paused` (written after, so a pause is never listed before it holds)."""
        changed = bool(self._run("pause", function_keys("pause", queue), ["1" if paused else "0"]))
        pipe = self._r.pipeline(transaction=False)
        (pipe.sadd if paused else pipe.srem)(PAUSED_KEY, queue)
        pipe.sadd(QUEUES_KEY, queue)
        pipe.execute()
        return changed

    @_guarded
    def paused(self) -> set[str]:
        """The queues listed as paused whose own key says so (one read when none is)."""
        listed = sorted(_str(name) for name in self._r.smembers(PAUSED_KEY))
        if not listed:
            return set()
        pipe = self._r.pipeline(transaction=False)
        for queue in listed:
            pipe.exists(queue_keys(queue).paused)
        return {queue for queue, found in zip(listed, pipe.execute(), strict=True) if found}

    def apply_steps(self, queue: str, steps: Iterable[bytes | str]) -> None:
        """Apply outbox steps posted in ``queue``'s slot (see outbox.py)."""
        self.flow.apply_steps(queue, steps)

    # -- workers ------------------------------------------------------------------

    @_guarded
    def add_task_metrics(self, deltas: Mapping[str, Mapping[str, float]]) -> None:
        calls = [
            Call("metrics", [metrics_key(queue)], [part for item in series.items() for part in item])
            for queue, series in sorted(deltas.items())
            if series
        ]
        if calls:
            self.functions.batch(calls, atomic=True)

    @_guarded
    def task_metrics(self) -> dict[str, dict[str, float]]:
        queues = self._queues(None)
        found = self.functions.batch([], [("HGETALL", metrics_key(queue)) for queue in queues]) if queues else []
        return {
            queue: {_str(name): float(value) for name, value in fields.items()}
            for queue, fields in zip(queues, found, strict=True)
            if fields
        }

    @_guarded
    def heartbeat(self, worker: WorkerInfo, ttl: float) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.set(worker_key(worker.id), worker.encode(), px=max(1, int(ttl * 1000)))
        pipe.sadd(WORKERS_KEY, worker.id)
        pipe.execute()

    @_guarded
    def unregister(self, worker_id: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(worker_key(worker_id))
        pipe.srem(WORKERS_KEY, worker_id)
        pipe.execute()

    @_guarded
    def workers(self) -> builtins.list[WorkerInfo]:
        ids = sorted(_str(worker_id) for worker_id in self._r.smembers(WORKERS_KEY))
        pipe = self._r.pipeline(transaction=False)
        for worker_id in ids:
            pipe.get(worker_key(worker_id))
        live: list[WorkerInfo] = []
        gone: list[str] = []
        for worker_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw is None:
                gone.append(worker_id)
            else:
                live.append(WorkerInfo.decode(raw))
        if gone:
            self._r.srem(WORKERS_KEY, *gone)
        return live

    # -- lifecycle ----------------------------------------------------------------

    @_guarded
    def ping(self) -> None:
        self._r.ping()

    @_guarded
    def storage_bytes(self) -> int | None:
        try:
            where = {"target_nodes": "primaries"} if self.cluster else {}  # RedisCluster.PRIMARIES
            found: Mapping[str, Any] = self._r.info("memory", **where)
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except redis.RedisError as exc:  # INFO not allowed (the README's least-privilege ACL)
            log.debug("cannot read used_memory: %s", exc)
            return None
        if "used_memory" in found:
            return int(found["used_memory"])
        # A cluster answers per master: their sum is what runq's data takes (replicas hold copies).
        nodes = [info for info in found.values() if isinstance(info, Mapping) and "used_memory" in info]
        return sum(int(info["used_memory"]) for info in nodes) if nodes else None

    def close(self) -> None:
        self._events.close()
        self._waits.close()
        self.functions.close()
        self._blocking_functions.close()
        self._r.close()
        self._blocking.close()


def _progress_args(report: ProgressReport) -> list[Any]:
    return [report.id, report.token, json.dumps({"value": report.value, "message": report.message})]


def _flow_arg(message: Message) -> str:
    """ENQUEUE_ITEM's flow field: "" for a message without flow options (the hot path)."""
    if message.expires is None and message.debounce is None and message.slot is None:
        return ""
    flow = {"e": message.expires, "d": message.debounce, "s": message.slot, "n": message.concurrency}
    return json.dumps({name: value for name, value in flow.items() if value is not None}, separators=(",", ":"))


def _outcome_args(outcome: Outcome) -> list[Any]:
    error = "" if outcome.error is None else json.dumps(dict(outcome.error))
    return [
        outcome.id,
        outcome.token,
        outcome.kind,
        outcome.result or "",
        error,
        outcome.delay,
        outcome.result_ttl,
        int(outcome.uncount),
        -1 if outcome.runtime is None else outcome.runtime,
    ]


def _stats(queues: list[str], results: list[Any], now: float) -> Stats:
    """Stats from the per-queue replies of :meth:`RedisBroker.stats`, in order."""
    counts: dict[str, QueueStats] = {}
    counters = dict.fromkeys(COUNTERS, 0)
    waits: list[float] = []
    runs: list[float] = []
    last_minute = 0
    found = iter(results)
    for name in queues:
        sizes = {s.value: int(next(found)) for s in STATUSES}
        if any(sizes.values()):
            counts[name] = QueueStats(**sizes)
        for counter, value in next(found).items():
            counters[_text(counter) or ""] = counters.get(_text(counter) or "", 0) + int(value)
        for sample in next(found):
            finished, wait, run = map(float, sample.split())
            if finished >= now - 300:
                waits.append(wait)
                runs.append(run)
        last_minute += sum(int(n) for second, n in next(found).items() if int(second) > now - 60)
    return Stats(counts, counters, Percentiles.of(waits), Percentiles.of(runs), last_minute / 60.0)


def _cycle(items: list[str]) -> Iterator[str]:
    while True:
        yield from items
