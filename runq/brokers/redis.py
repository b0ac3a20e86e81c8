"""The production broker: Redis or Valkey >= 6.2 (and Redis Cluster), via redis-py.

Every state change is one Lua script in ``lua/<method>.lua``, run atomically on
the server with the helpers of ``lua/lib.lua`` prepended. Each script gets all
its keys through KEYS, and every key of a queue carries the hash tag ``{queue}``,
so a script touches exactly one cluster slot. Task ids carry their queue, so a
call that has only an id still finds the slot. All times come from Redis
``TIME`` inside the scripts: callers pass durations.

Key layout (``q`` is the queue name):

    runq:{q}:tasks            hash    id -> task record (JSON: status, attempts, token, times...);
                                      none for a pending task never claimed (see lib.lua)
    runq:{q}:payloads         hash    id -> Message JSON, as enqueued
    runq:{q}:pending          zset    id -> (100 - priority) * 2^44 + seq   (claim order)
    runq:{q}:scheduled        zset    id -> ready_at
    runq:{q}:running          zset    id -> lease_until
    runq:{q}:expiring         zset    id -> expires_at (succeeded, cancelled)
    runq:{q}:seq              string  INCR: enqueue and ready order
    runq:{q}:counters         hash    enqueued/succeeded/failed/retried/cancelled
    runq:{q}:wake             list    wake-up tokens for idle workers (<= 32)
    runq:{q}:waiters          hash    id -> clients blocked in wait()
    runq:{q}:samples          list    recent successes "finished wait run" (<= 4096)
    runq:{q}:throughput       hash    second -> successes (last ~2 minutes)
    runq:{q}:status:<status>  zset    id -> seq, for waiting and the final states (list, counts)
    runq:{q}:done:<id>        list    wait() notification, expires after 10 s
    runq:{q}:key:<key>        string  idempotency key -> id, expires after key_ttl
    runq:{q}:children         hash    parent id -> JSON list of its waiting dependents (any queue)
    runq:{q}:parents          hash    waiting id -> JSON list of its parents not ended yet
    runq:{q}:outbox           zset    JSON workflow step for another queue's slot -> posted at
    runq:queues               set     every queue ever used
    runq:workers              set     worker ids; runq:worker:<id> string, expires after ttl

Per-task data lives in per-queue hashes rather than one hash per task because
``claim`` picks its tasks inside the script: a per-task key would have to be
built in Lua, which Redis Cluster forbids. Finished tasks are deleted by the
scripts once their ``result_ttl`` passes (``expiring``), a few hundred per call.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any, NamedTuple, ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import ClusterError, NoScriptError, RedisClusterException
from redis.retry import Retry

from runq.brokers.base import Broker
from runq.brokers.redis_flow import RedisFlow
from runq.errors import BrokerUnavailable
from runq.logs import mask_url
from runq.models import (
    COUNTERS,
    FINAL_STATUSES,
    Claim,
    Message,
    Outcome,
    Percentiles,
    QueueStats,
    Stats,
    Status,
    TaskInfo,
    WorkerInfo,
    queue_of,
    task_info,
)

log = logging.getLogger("runq.broker")
P = ParamSpec("P")
T = TypeVar("T")

SCRIPTS = (
    *("enqueue", "claim", "renew", "settle", "cancel", "retry", "purge", "trim", "watch", "unwatch"),
    *("link", "resolve", "rate", "breaker"),  # flow control: redis_flow.py
)
STATUSES = tuple(Status)  # the order of the status:<status> keys in QueueKeys
BATCH = 200  # tasks promoted, reclaimed or expired per claim, purged per purge call
BLOCK_SLICE = 5.0  # longest single blocking call, so a lost connection is noticed
CLUSTER_SLICE = 0.05  # per-queue blocking slice when the queues live in different slots
CANCELLED = '{"type":"Cancelled","message":"cancelled"}'
QUEUES_KEY = "runq:queues"
REGISTER_EVERY = 10.0
WORKERS_KEY = "runq:workers"
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterError, RedisClusterException)


class QueueKeys(NamedTuple):
    """A queue's keys, in the order every script receives them as KEYS[1..22]."""

    tasks: str
    payloads: str
    pending: str
    scheduled: str
    running: str
    expiring: str
    seq: str
    counters: str
    wake: str
    waiters: str
    samples: str
    throughput: str
    by_pending: str
    by_scheduled: str
    by_waiting: str
    by_running: str
    by_succeeded: str
    by_failed: str
    by_cancelled: str
    children: str
    parents: str
    outbox: str

    def by_status(self, status: Status) -> str:
        """The zset that holds the tasks in ``status`` (pending, scheduled and running
        tasks are kept only in the zsets that order them)."""
        if status in _PLACED:
            return str(getattr(self, status.value))
        return self[12 + STATUSES.index(status)]


_PLACED = (Status.PENDING, Status.SCHEDULED, Status.RUNNING)


@functools.lru_cache(maxsize=1024)
def queue_keys(queue: str) -> QueueKeys:
    tag = f"runq:{{{queue}}}"
    parts = QueueKeys._fields[:12]
    flow = (f"{tag}:children", f"{tag}:parents", f"{tag}:outbox")
    return QueueKeys._make(
        [*(f"{tag}:{part}" for part in parts), *(f"{tag}:status:{s.value}" for s in STATUSES), *flow]
    )


def done_key(task_id: str) -> str:
    return f"runq:{{{queue_of(task_id)}}}:done:{task_id}"


def idempotency_key(queue: str, key: str) -> str:
    return f"runq:{{{queue}}}:key:{key}"


def worker_key(worker_id: str) -> str:
    return f"runq:worker:{worker_id}"


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", errors="replace")


def _str(value: bytes | str | None) -> str:
    return _text(value) or ""


def _unavailable(url: str, exc: Exception) -> BrokerUnavailable:
    """``BrokerUnavailable`` naming the (masked) URL; a TLS verification failure says what to fix."""
    message = f"Redis at {mask_url(url)} is unavailable: {exc}"
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        message += (
            " (TLS: the server's certificate was not accepted: for a private CA add"
            " ?ssl_ca_certs=/path/ca.pem to the URL, and connect by a name the certificate holds)"
        )
    return BrokerUnavailable(message)


def _guarded(method: Callable[P, T]) -> Callable[P, T]:
    """Turn redis-py's connection failures into ``BrokerUnavailable`` naming the (masked) URL."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except UNAVAILABLE as exc:
            broker: RedisBroker = args[0]  # type: ignore[assignment]
            raise _unavailable(broker.url, exc) from exc

    return call


class _Batch:
    """Commands and script calls sent in one round trip.

    Scripts go as plain EVALSHA (redis-py's pipelined scripts cost an extra SCRIPT
    EXISTS round trip each time); a script the server lost (restart) is re-run on its
    own through :class:`Script`, which loads it.
    """

    def __init__(self, client: Any, transaction: bool = False) -> None:
        self.pipe = client.pipeline(transaction=transaction)
        self.scripts: dict[int, tuple[Script, Sequence[str], Sequence[Any]]] = {}

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        self.scripts[len(self.pipe)] = (script, keys, args)
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)

    def execute(self) -> list[Any]:
        results: list[Any] = self.pipe.execute(raise_on_error=False)
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                script, keys, args = self.scripts[i]
                results[i] = script(keys, args)
            elif isinstance(result, Exception):
                raise result
        return results


class RedisBroker(RedisFlow, Broker):
    """The Broker on Redis: thread-safe (redis-py pools connections per client).

    Blocking calls (BLPOP in ``wait_for_work`` and ``wait``) use their own client, so
    they never hold a connection another thread needs, and block at most
    ``BLOCK_SLICE`` at a time. redis-py's automatic retry is off: a script that
    timed out may have run, and running it again could enqueue twice; an outage
    surfaces as ``BrokerUnavailable`` and the worker's own back-off retries. The
    eviction-policy warning is given on the first ``claim``, which only workers make.
    """

    def __init__(self, url: str, connect_timeout: float = 5.0) -> None:
        self.url = url
        self.cluster = url.lower().startswith("redis+cluster://")
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),  # a script must never run twice; the caller decides
        }
        timeout = max(connect_timeout, 5.0)
        self._r = self._client(options | {"socket_timeout": timeout})
        self._blocking = self._client(options | {"socket_timeout": timeout + BLOCK_SLICE})
        lua = resources.files("runq.brokers").joinpath("lua")
        lib = lua.joinpath("lib.lua").read_text()
        self._scripts = {
            name: self._r.register_script(lib + lua.joinpath(f"{name}.lua").read_text()) for name in SCRIPTS
        }
        self._policy_checked = False
        self._watch_loaded = False
        self._registered: dict[str, float] = {}  # queue -> when this process last added it to QUEUES_KEY

    def _client(self, options: dict[str, Any]) -> Any:
        """A client for the URL; ``redis+cluster://`` gets a cluster client."""
        try:
            if self.cluster:
                from redis.cluster import RedisCluster

                return RedisCluster.from_url("redis://" + self.url.partition("://")[2], **options)
            return redis.Redis.from_url(self.url, **options)
        except UNAVAILABLE as exc:
            raise _unavailable(self.url, exc) from exc

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[name](keys, args, client=self._r)

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
        groups: dict[str, list[int]] = {}
        for i, message in enumerate(messages):
            groups.setdefault(message.queue, []).append(i)
        if not groups:
            return []
        calls = [
            self._enqueue_call(queue, [messages[i] for i in indexes], key_ttl) for queue, indexes in groups.items()
        ]
        unregistered = self._unregistered(groups)
        if len(calls) == 1 and not unregistered:  # the common case: one script call, no pipeline
            results = [self._run("enqueue", *calls[0])]
        else:
            batch = _Batch(self._r, transaction=len(groups) > 1 and not self.cluster)
            for keys, args in calls:
                batch.script(self._scripts["enqueue"], keys, args)
            if unregistered:
                batch.pipe.sadd(QUEUES_KEY, *unregistered)
            results = batch.execute()
        ids: list[str] = [""] * len(messages)
        for (queue, indexes), returned in zip(groups.items(), results[: len(groups)], strict=True):
            for i, task_id in zip(indexes, returned, strict=False):  # stops at the ids
                ids[i] = _str(task_id)
            if len(returned) > len(indexes):  # steps posted for parents in other queues
                self.apply_steps(queue, returned[len(indexes) :])
        return ids

    @staticmethod
    def _enqueue_call(queue: str, messages: Sequence[Message], key_ttl: float) -> tuple[list[str], list[Any]]:
        keys: list[str] = list(queue_keys(queue))
        args: list[Any] = [max(1, int(key_ttl * 1000))]
        for m in messages:
            if m.key is not None:
                keys.append(idempotency_key(queue, m.key))
            after = json.dumps(m.after) if m.after else ""
            args += [m.id, m.payload, m.priority, m.delay, m.result_ttl, int(m.key is not None), after]
        return keys, args

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
        """One script call per queue, in order, until ``limit`` tasks are taken."""
        if not self._policy_checked:
            self._check_policy()
        claims: list[Claim] = []
        for queue in queues:
            if len(claims) >= limit:
                break
            prefix = secrets.token_hex(8) + ":"
            args = [worker_id, limit - len(claims), lease, prefix, BATCH]
            for answer in self._run("claim", queue_keys(queue), args):
                if not isinstance(answer, list):  # an outbox step a dead process left behind
                    self.apply_steps(queue, [answer])
                    continue
                task_id, payload, attempt, token = answer
                claims.append(Claim(_str(task_id), queue, _text(payload) or "", int(attempt), _text(token) or ""))
        return claims

    @_guarded
    def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Block on the queues' wake lists until work arrives, the next due time, or ``timeout``."""
        pipe = self._r.pipeline(transaction=False)
        pipe.time()
        for queue in queues:
            keys = queue_keys(queue)
            pipe.zrange(keys.scheduled, 0, 0, withscores=True)
            pipe.zrange(keys.running, 0, 0, withscores=True)
        (seconds, micros), *earliest = pipe.execute()
        now = seconds + micros / 1e6
        due = min((score for found in earliest for _, score in found), default=math.inf)
        wait = min(timeout, due - now, BLOCK_SLICE)
        if wait <= 0.001:
            return
        wake_keys = [queue_keys(queue).wake for queue in queues]
        if not self.cluster or len(wake_keys) == 1:
            self._blocking.blpop(wake_keys, _ceil_ms(wait))
            return
        # Cluster: the wake lists live in different slots, and one BLPOP reaches one slot.
        deadline = now + wait
        for key in _cycle(wake_keys):
            if self._blocking.blpop([key], CLUSTER_SLICE) is not None or self._server_time() >= deadline:
                return

    def _server_time(self) -> float:
        seconds, micros = self._r.time()
        return float(seconds + micros / 1e6)

    @_guarded
    def renew(self, claims: Sequence[Claim], lease: float) -> list[bool]:
        return self._per_queue("renew", claims, lambda c: [c.id, c.token], [lease], with_done=False)

    @_guarded
    def settle(self, outcomes: Sequence[Outcome]) -> list[bool]:
        return self._per_queue("settle", outcomes, _outcome_args, [], with_done=True)

    def _per_queue(
        self,
        name: str,
        items: Sequence[Claim | Outcome],
        item_args: Callable[[Any], list[Any]],
        head: list[Any],
        with_done: bool,
    ) -> list[bool]:
        """One script call per queue, pipelined in one round trip; answers in input order."""
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(queue_of(item.id), []).append(i)
        batch = _Batch(self._r)
        for queue, indexes in groups.items():
            keys = list(queue_keys(queue))
            args = list(head)
            for i in indexes:
                args += item_args(items[i])
                if with_done:
                    keys.append(done_key(items[i].id))
            batch.script(self._scripts[name], keys, args)
        answers = [False] * len(items)
        for (queue, indexes), returned in zip(groups.items(), batch.execute() if groups else [], strict=True):
            for i, ok in zip(indexes, returned, strict=False):  # stops at the answers
                answers[i] = bool(ok)
            if len(returned) > len(indexes):  # settle: steps for dependents (redis_flow.py)
                self.apply_steps(queue, returned[len(indexes) :])
        return answers

    # -- inspecting and steering --------------------------------------------------

    @_guarded
    def get(self, task_id: str) -> TaskInfo | None:
        return self._info(task_id, self._run("watch", queue_keys(queue_of(task_id)), [task_id, 0]))

    @staticmethod
    def _info(task_id: str, found: Any) -> TaskInfo | None:
        """A TaskInfo from watch.lua's answer ({record, payload} or nil)."""
        if not found:
            return None
        record: dict[str, Any] = json.loads(found[0])
        record.update(id=task_id, queue=queue_of(task_id), payload=_text(found[1]))
        return task_info(record)

    @_guarded
    def wait(self, task_id: str, timeout: float) -> TaskInfo | None:
        """Register and block in one round trip; the wake-up carries the final state.

        watch.lua and BLPOP go in one pipeline: the script counts this client as a
        waiter (or, for a task already final, pushes its state at once), and the state
        change that finishes the task pushes that state to the done list, so the BLPOP
        reply is the answer.
        """
        keys = queue_keys(queue_of(task_id))
        if timeout <= 0:
            return self._info(task_id, self._run("watch", keys, [task_id, 0]))
        watch = self._scripts["watch"]
        if not self._watch_loaded:  # a NOSCRIPT inside the pipeline would cost a whole slice
            self._r.script_load(watch.script)
            self._watch_loaded = True
        done = done_key(task_id)
        pipe = self._blocking.pipeline(transaction=False)
        pipe.evalsha(watch.sha, len(keys) + 1, *keys, done, task_id, 1)
        pipe.blpop([done], _ceil_ms(min(timeout, BLOCK_SLICE)))
        found, popped = pipe.execute(raise_on_error=False)
        if isinstance(found, NoScriptError):  # Redis restarted since: load it, read plainly
            self._watch_loaded = False
            return self._info(task_id, self._run("watch", keys, [task_id, 0]))
        for reply in (found, popped):
            if isinstance(reply, Exception):
                raise reply
        if popped is None:  # the slice ran out: stop counting as a waiter
            self._run("unwatch", keys, [task_id])
            return self._info(task_id, found)
        token = popped[1]
        if token in (b"1", b"gone", "1", "gone"):  # a plain wake-up (see redis_flow) or gone
            return self._info(task_id, self._run("watch", keys, [task_id, 0]))
        return self._info(task_id, json.loads(token))

    @_guarded
    def cancel(self, task_id: str) -> bool:
        keys = [*queue_keys(queue_of(task_id)), done_key(task_id)]
        done, *steps = self._run("cancel", keys, [task_id, CANCELLED])
        self.apply_steps(queue_of(task_id), steps)
        return bool(done)

    @_guarded
    def retry(self, task_id: str) -> bool:
        return bool(self._run("retry", queue_keys(queue_of(task_id)), [task_id]))

    def _queues(self, queue: str | None) -> list[str]:
        if queue is not None:
            return [queue]
        return sorted(_str(name) for name in self._r.smembers(QUEUES_KEY))

    @_guarded
    def list(self, status: Status | None, queue: str | None, limit: int) -> list[TaskInfo]:
        """Newest first: the top ``limit`` of each queue's status indexes, merged by enqueue order."""
        queues = self._queues(queue)
        statuses = STATUSES if status is None else (status,)
        pipe = self._r.pipeline(transaction=False)
        for name in queues:
            for s in statuses:
                pipe.zrevrange(queue_keys(name).by_status(s), 0, limit - 1, withscores=True)
        found = iter(pipe.execute())
        batch = _Batch(self._r)
        hits: list[tuple[str, float]] = []
        for name in queues:
            newest = sorted((hit for _ in statuses for hit in next(found)), key=lambda hit: -hit[1])[:limit]
            for member, seq in newest:
                task_id = _str(member)
                hits.append((task_id, seq))
                batch.script(self._scripts["watch"], queue_keys(name), [task_id, 0])
        listed: list[tuple[float, float, TaskInfo]] = []
        for (task_id, seq), answer in zip(hits, batch.execute() if hits else [], strict=True):
            info = self._info(task_id, answer)
            if info is not None and info.enqueued_at is not None and status in (None, info.status):
                listed.append((info.enqueued_at.timestamp(), seq, info))
        listed.sort(key=lambda entry: entry[:2], reverse=True)
        return [info for _, _, info in listed[:limit]]

    @_guarded
    def purge(self, status: Status | None, queue: str | None) -> int:
        if status is Status.RUNNING:
            raise ValueError("running tasks cannot be purged: cancel them first")
        statuses = [s.value for s in (FINAL_STATUSES if status is None else (status,))]
        removed = 0
        for name in self._queues(queue):
            while True:
                count = int(self._run("purge", queue_keys(name), [BATCH, *statuses]))
                removed += count
                if count < BATCH:
                    break
        return removed

    @_guarded
    def stats(self) -> Stats:
        queues = self._queues(None)
        batch = _Batch(self._r)
        for name in queues:
            batch.script(self._scripts["trim"], queue_keys(name), [BATCH * 5])
        batch.pipe.time()
        for name in queues:
            keys = queue_keys(name)
            for s in STATUSES:
                batch.pipe.zcard(keys.by_status(s))
            batch.pipe.hgetall(keys.counters)
            batch.pipe.lrange(keys.samples, 0, -1)
            batch.pipe.hgetall(keys.throughput)
        results = batch.execute()[len(queues) :]
        seconds, micros = results[0]
        stats = _stats(queues, results[1:], seconds + micros / 1e6)
        stats.breakers.update(self.breaker_states())
        return stats

    take_tick = _guarded(RedisFlow.take_tick)
    acquire_rate = _guarded(RedisFlow.acquire_rate)
    breaker = _guarded(RedisFlow.breaker)

    # -- workers ------------------------------------------------------------------

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

    def close(self) -> None:
        self._r.close()
        self._blocking.close()


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


def _ceil_ms(seconds: float) -> float:
    """A positive blocking timeout rounded up to whole milliseconds (0 would block forever)."""
    return max(0.001, math.ceil(seconds * 1000) / 1000)


def _cycle(items: list[str]) -> Iterator[str]:
    while True:
        yield from items
