"""Every Redis key runq uses, and the KEYS/ARGV layout of every function: the one definition.

The Lua side never numbers a key or an argument itself: :func:`lua_prologue` writes, for
each function, the table ``Q`` (key name -> ``KEYS[i]``, only the keys that function is
sent) and one table per per-item argument layout (field -> offset), from the tuples below.
Adding a key or a field is one edit here; tests/test_redis_layout.py fails when a Lua file
names a key or a field these tuples do not define.

Key layout (``q`` is the queue name; every key of a queue carries the hash tag ``{q}``, so
a function touches exactly one cluster slot):

    runq:{q}:tasks            hash    id -> task record (JSON: status, attempts, token, times...);
                                      none for a pending task never claimed; a finished one
                                      with one-letter names (lib.lua: encode, decode)
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
    runq:{q}:status:<status>  zset    id -> seq, for waiting and the final states (list, counts),
                                      and scheduled (list: `scheduled` orders by eta); pending and
                                      running are listed from their own zsets above (list.lua)
    runq:{q}:children         hash    parent id -> JSON list of its waiting dependents (any queue)
    runq:{q}:parents          hash    waiting id -> JSON list of its parents not ended yet
    runq:{q}:outbox           zset    JSON workflow step for another queue's slot -> posted at
    runq:{q}:done:<id>        list    wait() notification, expires after 10 s
    runq:waits:<hub>          list    wakes one process's (or event loop's) shared waiting connection
                                      (waits.py); on a cluster runq:{q}:waits:<hub>, in the slot it
                                      blocks on; expires after 10 s
    runq:{q}:paused           string  exists while the queue is paused: claims take nothing (pause.lua)
    runq:{q}:deadlines        zset    id -> deadline, for pending and scheduled tasks with ``expires``
    runq:{q}:slots            zset    the seats of concurrency slots, all score 0, by member:
                                      "<slot>\0p\0<id>" pending, "<slot>\0r\0<id>" running
    runq:{q}:held             zset    tasks held by their slot's limit, score 0, member
                                      "<slot>\0<claim score, 20 digits>\0<id>" (release order)
    runq:{q}:key:<key>        string  idempotency key -> id, expires after key_ttl
    runq:{q}:events:<id>      channel (pub/sub, not a key) a followed task's changes (follow.lua, events.py)
    runq:{q}:metrics          hash    "<series>:<task>" -> total: per-task metrics that
                                      workers add with their heartbeat (metrics.lua)
    runq:queues               set     every queue ever used
    runq:workers              set     worker ids; runq:worker:<id> string, expires after ttl
    runq:rate:{<name>}        hash    tat, tail: a task name's rate limit (GCRA, rate.lua)
    runq:breaker:{<name>}     hash    state, failures, open_until, probe_until (breaker.lua)
    runq:breakers             set     task names that have a breaker key (for stats)
    runq:paused               set     the paused queues, for listing (the queue's own key decides)
    runq:tick:{<name>}:<tick> string  a periodic tick taken by one beat process (SET NX PX)
"""

from __future__ import annotations

import functools
import json
from typing import NamedTuple

from runq.brokers.rules import EXPIRED, WORKER_LOST
from runq.models import DEFAULT_RESULT_TTL, Status, queue_of

QUEUES_KEY = "runq:queues"
WORKERS_KEY = "runq:workers"
BREAKERS_KEY = "runq:breakers"
PAUSED_KEY = "runq:paused"
INDEXED = (Status.WAITING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)  # status:<s> zsets, by seq
LISTED = "scheduled_seq"  # status:scheduled, by seq: the order list() shows scheduled tasks in
PLACED = {Status.PENDING: "pending", Status.SCHEDULED: "scheduled", Status.RUNNING: "running"}


class QueueKeys(NamedTuple):
    """A queue's keys. A function is sent the subset it names in :data:`FUNCTIONS`."""

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
    waiting: str
    succeeded: str
    failed: str
    cancelled: str
    children: str
    parents: str
    outbox: str
    paused: str
    deadlines: str
    slots: str
    held: str
    scheduled_seq: str

    def by_status(self, status: Status) -> str:
        """The zset that holds the tasks in ``status``."""
        return str(getattr(self, PLACED.get(status, status.value)))


ALL = QueueKeys._fields
READY = ("tasks", "payloads", "pending", "seq", "counters", "wake", "scheduled")  # enqueue of ready tasks only

# Per-item argument layouts: ARGV holds a head, then these fields once per item.
# flow: "" or JSON {e: expires s, d: debounce s, s: slot, n: its limit} (SPEC §9)
ENQUEUE_ITEM = ("id", "payload", "priority", "delay", "result_ttl", "has_key", "after", "flow")
SETTLE_ITEM = ("id", "token", "kind", "result", "error", "delay", "result_ttl", "uncount", "runtime")
RENEW_ITEM = ("id", "token")
PROGRESS_ITEM = ("id", "token", "progress")
LAYOUTS = {"ENQ": ENQUEUE_ITEM, "SET": SETTLE_ITEM, "REN": RENEW_ITEM, "PRO": PROGRESS_ITEM}
EVENTS = "runq:{%s}:events:%s"  # a task's channel, from its queue and id (lib.lua: changed)


class Function(NamedTuple):
    """One Redis Function (or fallback script): its Lua body and the queue keys it is sent.

    ``keys`` is ``None`` for a function of a task name (its one key is not a queue's).
    Keys beyond the queue's (``KEYS[EXTRA + i]``) are per-item keys the caller appends.
    """

    source: str
    keys: tuple[str, ...] | None = ALL


FUNCTIONS = {
    "enqueue": Function("enqueue"),
    "enqueue_ready": Function("enqueue", READY),
    "claim": Function("claim"),
    "renew": Function("renew", ("tasks", "pending", "running")),
    "settle": Function("settle"),
    "cancel": Function("cancel"),
    "retry": Function("retry"),
    "purge": Function("purge"),
    "trim": Function("trim"),
    "list": Function("list"),
    "due": Function("due", ("scheduled", "running", "deadlines")),
    "pause": Function("pause", ("paused", "pending", "wake")),
    "watch": Function("watch", ("tasks", "pending", "payloads", "waiters")),
    "follow": Function("follow", ("tasks", "pending", "payloads")),
    "progress": Function("progress", ("tasks",)),
    "unwatch": Function("unwatch", ("waiters",)),
    "link": Function("link"),
    "resolve": Function("resolve"),
    "rate": Function("rate", None),
    "breaker": Function("breaker", None),  # ARGV[4]: the claim's token (a repeat of a settle counts once)
    "metrics": Function("metrics", None),  # its one key: metrics_key(queue), off the hot path
}


@functools.lru_cache(maxsize=1024)
def queue_keys(queue: str) -> QueueKeys:
    tag = f"runq:{{{queue}}}"
    names = {s.value: f"status:{s.value}" for s in INDEXED} | {LISTED: "status:scheduled"}
    return QueueKeys._make(f"{tag}:{names.get(f, f)}" for f in ALL)


@functools.lru_cache(maxsize=4096)
def function_keys(name: str, queue: str) -> tuple[str, ...]:
    """The queue keys function ``name`` is sent, in its KEYS order."""
    keys = queue_keys(queue)
    fields = FUNCTIONS[name].keys or ()
    return tuple(getattr(keys, field) for field in fields)


def done_key(task_id: str) -> str:
    return f"runq:{{{queue_of(task_id)}}}:done:{task_id}"


def events_channel(task_id: str) -> str:
    """The pub/sub channel a followed task's changes are published on (a channel, not a key:
    on a cluster every node relays it)."""
    return EVENTS % (queue_of(task_id), task_id)


def waits_key(hub: str, queue: str | None) -> str:
    """The wake list of one shared waiting connection (waits.py); ``queue`` on a cluster (its slot)."""
    return f"runq:waits:{hub}" if queue is None else f"runq:{{{queue}}}:waits:{hub}"


def idempotency_key(queue: str, key: str) -> str:
    return f"runq:{{{queue}}}:key:{key}"


def metrics_key(queue: str) -> str:
    return f"runq:{{{queue}}}:metrics"


def worker_key(worker_id: str) -> str:
    return f"runq:worker:{worker_id}"


def rate_key(name: str) -> str:
    return f"runq:rate:{{{name}}}"


def breaker_key(name: str) -> str:
    return f"runq:breaker:{{{name}}}"


def tick_key(name: str, tick: str) -> str:
    return f"runq:tick:{{{name}}}:{tick}"


def lua_keys(name: str, declare: bool = True) -> str:
    """Where function ``name``'s keys are: ``Q`` (key name -> ``KEYS[i]``), ``EXTRA`` and ``QUEUE``.

    ``declare=False`` assigns the library's shared upvalues instead of declaring locals: in
    the Functions library the helpers are defined once, and each call points them at its keys.
    """
    fields = FUNCTIONS[name].keys
    local = "local " if declare else ""
    if fields is None:
        return f"{local}Q, EXTRA, QUEUE = {{}}, 0, nil\n"
    entries = ", ".join(f"{field} = KEYS[{i}]" for i, field in enumerate(fields, 1))
    return (
        f"{local}Q, EXTRA = {{{entries}}}, {len(fields)}\n{local}QUEUE = string.match(KEYS[1], '^runq:{{(.*)}}:%a+$')\n"
    )


def lua_layouts() -> str:
    """One table per per-item argument layout: field -> offset, and the item's size; and the
    constants the scripts share with the other brokers (brokers/rules.py)."""
    lines = [
        f"local {name} = {json.dumps(value)}"
        for name, value in (
            ("WORKER_LOST", WORKER_LOST),
            ("EXPIRED", EXPIRED),
            ("EVENTS", EVENTS),
            ("DEFAULT_RESULT_TTL", DEFAULT_RESULT_TTL),  # a payload without result_ttl has this one
        )
    ]
    for table, layout in LAYOUTS.items():
        entries = ", ".join(f"{field} = {i}" for i, field in enumerate(layout))
        lines.append(f"local {table}, {table}_N = {{{entries}}}, {len(layout)}")
    return "\n".join(lines) + "\n"


def lua_prologue(name: str) -> str:
    """The generated head of function ``name`` run as a script: where its keys and arguments are."""
    return f"-- generated from runq/brokers/redis/keys.py for {name}\n" + lua_keys(name) + lua_layouts()
