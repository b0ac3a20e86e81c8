"""Broker URL → redis-py client: one Redis, a Redis Cluster, or a master found through Sentinel.

    redis://host:port/db, rediss://…, unix://…        one Redis (redis-py's own URL syntax)
    redis+cluster://host:port[,host:port…]             Redis Cluster: any reachable nodes seed it
    redis+sentinel://host:port[,host:port…]/service/db  the master Sentinel names for ``service``

Options runq reads itself (removed before redis-py sees the URL), on every kind:

    ?wait_replicas=N&wait_timeout_ms=T   after an enqueue or a settle, ``WAIT N T``: Redis
        replication is asynchronous, so an acknowledged write can be lost if its master dies
        before a replica has it. With this, ``enqueue`` returns only once N replicas hold the
        task (else raises ``BrokerUnavailable`` saying so: the task IS enqueued on the master).
        ``T`` defaults to 1000 ms.

The rest of the broker does not care which kind it has: only ``cluster`` (no pipelined
functions, per-node blocking) changes code paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterError, RedisClusterException

from runq.errors import BrokerUnavailable
from runq.logs import mask_url

SINGLE_SCHEMES = {"redis", "rediss", "unix"}
WAIT_OPTIONS = ("wait_replicas", "wait_timeout_ms")
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterError, RedisClusterException)


def pool_exhausted(exc: BaseException) -> bool:
    """redis-py's "Too many connections": a client-side pool limit (a ``ConnectionError``
    subclass), not an outage: it must not read as ``BrokerUnavailable``."""
    return isinstance(exc, redis.ConnectionError) and str(exc) == "Too many connections"


def unavailable(url: str, exc: BaseException) -> BaseException:
    """``BrokerUnavailable`` naming the (masked) URL for a connection failure; any other error
    (a pool limit, a refused command) as it is. A TLS verification failure says what to fix."""
    if not isinstance(exc, UNAVAILABLE) or pool_exhausted(exc):
        return exc
    message = f"Redis at {mask_url(url)} is unavailable: {exc}"
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        message += (
            " (TLS: the server's certificate was not accepted: for a private CA add"
            " ?ssl_ca_certs=/path/ca.pem to the URL, and connect by a name the certificate holds)"
        )
    return BrokerUnavailable(message)


class FunctionsCluster(RedisCluster):
    """redis-py's cluster client finds the slot of an ``EVALSHA`` from its arguments, but for
    ``FCALL`` it asks the server (``COMMAND GETKEYS``) on the client's default node: one more
    round trip per call, and when that node dies, every call fails with it, unnoticed by the
    topology refresh (which only a failed call to the node that owns the slot sets off). Seen
    as a worker stuck for good after a master's failover. ``FCALL name numkeys key…`` has its
    keys where ``EVALSHA`` has them: read them there."""

    def determine_slot(self, *args: Any) -> Any:
        if str(args[0]).upper() in ("FCALL", "FCALL_RO") and len(args) > 3 and int(args[2]) > 0:
            slots = {self.keyslot(key) for key in args[3 : 3 + int(args[2])]}  # type: ignore[no-untyped-call]
            if len(slots) == 1:
                return slots.pop()
        return super().determine_slot(*args)  # type: ignore[no-untyped-call, unused-ignore]  # untyped in 5.x


@dataclass(frozen=True)
class Target:
    """What a runq Redis URL names, parsed once."""

    kind: str  # "single", "cluster" or "sentinel"
    url: str  # the URL without runq's own options, as redis-py takes it (single)
    hosts: tuple[tuple[str, int], ...] = ()  # cluster seeds or sentinels
    service: str = ""  # sentinel: the master's name
    db: int = 0
    username: str | None = None
    password: str | None = None
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"


def _hosts(netloc: str, url: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.rpartition("@")[2].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{mask_url(url)!r}: each node must be host:port, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return tuple(hosts)


def _wait_options(query: list[tuple[str, str]], url: str) -> tuple[int, int]:
    options = dict(query)
    try:
        replicas = int(options.get("wait_replicas", "0"))
        timeout = int(options.get("wait_timeout_ms", "1000"))
    except ValueError:
        raise ValueError(f"{mask_url(url)!r}: wait_replicas and wait_timeout_ms must be whole numbers") from None
    if replicas < 0 or timeout < 0:
        raise ValueError(f"{mask_url(url)!r}: wait_replicas and wait_timeout_ms must be >= 0")
    return replicas, timeout


def parse(url: str) -> Target:
    """Split a runq Redis URL into what the client needs; bad input raises ``ValueError``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qsl(parts.query, keep_blank_values=True)
    replicas, timeout = _wait_options(query, url)
    rest = urlencode([(k, v) for k, v in query if k not in WAIT_OPTIONS])
    plain = url.partition("?")[0] + (f"?{rest}" if rest else "")  # not urlunsplit: unix:///p would lose //
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if scheme in SINGLE_SCHEMES:
        return Target("single", plain, wait_replicas=replicas, wait_timeout_ms=timeout)
    if scheme == "redis+cluster":
        plain = "redis://" + plain.partition("://")[2]
        hosts = _hosts(parts.netloc, url)
        return Target("cluster", plain, hosts, "", 0, username, password, replicas, timeout)
    if scheme == "redis+sentinel":
        service, _, db = parts.path.strip("/").partition("/")
        if not service:
            raise ValueError(
                f"{mask_url(url)!r}: name the master's service: redis+sentinel://host:port[,host:port]/service/db"
            )
        if db and not db.isdigit():
            raise ValueError(f"{mask_url(url)!r}: the database must be a number, got {db!r}")
        hosts = _hosts(parts.netloc, url)
        return Target("sentinel", plain, hosts, service, int(db or 0), username, password, replicas, timeout)
    raise ValueError(f"{mask_url(url)!r} is not a Redis URL")


def client(target: Target, options: dict[str, Any]) -> Any:
    """A redis-py client for ``target`` (options: timeouts, retry), connected lazily."""
    if target.url.lower().startswith("rediss://"):
        # Check the certificate's host name on every redis-py (before 6.0 it did not by
        # default); ?ssl_check_hostname=false in the URL still wins.
        options = {"ssl_check_hostname": True, **options}
    if target.kind == "single":
        return redis.Redis.from_url(target.url, **options)
    auth = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        from redis.cluster import ClusterNode

        # The first node in redis-py's URL form (so its query options apply), the others as seeds.
        first = urlsplit(target.url)
        host, port = target.hosts[0]
        netloc = first.netloc.rpartition("@")[0] + "@" if "@" in first.netloc else ""
        url = urlunsplit(first._replace(netloc=f"{netloc}{host}:{port}"))
        node: Any = ClusterNode  # typed differently across redis-py majors
        seeds = [node(h, p) for h, p in target.hosts[1:]]
        return (
            FunctionsCluster.from_url(url, startup_nodes=seeds, **options)  # type: ignore[no-untyped-call, unused-ignore]
            if seeds
            else FunctionsCluster.from_url(url, **options)  # type: ignore[no-untyped-call, unused-ignore]
        )
    from redis.sentinel import Sentinel

    options = options | {"connection_class": _sentinel_connection()}
    # The sentinels are asked with short timeouts of their own; the master gets runq's options.
    timeout = options.get("socket_connect_timeout", 5.0)
    sentinel_class: Any = Sentinel  # typed differently across redis-py majors
    sentinels = sentinel_class(
        list(target.hosts), sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout}
    )
    return sentinels.master_for(target.service, db=target.db, **auth, **options)


def async_client(target: Target, options: dict[str, Any], pool_size: int | None) -> Any:
    """The redis.asyncio twin of :func:`client` for a cluster or a Sentinel master (one Redis:
    the async broker builds its own pool). ``pool_size`` caps the connections per node."""
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    size = {"max_connections": pool_size} if pool_size else {}
    if target.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode as AsyncClusterNode

        seeds = [AsyncClusterNode(h, p) for h, p in target.hosts]
        return AsyncFunctionsCluster(startup_nodes=seeds, **auth, **options, **size)
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    timeout = options.get("socket_connect_timeout", 5.0)
    async_sentinel_class: Any = AsyncSentinel  # typed differently across redis-py majors
    sentinels = async_sentinel_class(
        list(target.hosts), sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout}
    )
    master = sentinels.master_for(target.service, db=target.db, **auth, **options)
    master.runq_sentinels = sentinels.sentinels  # closing the master does not close these
    return master


def _async_functions_cluster() -> type:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    class Cluster(AsyncRedisCluster):
        """:class:`FunctionsCluster` for redis.asyncio: an ``FCALL``'s slot from its own keys."""

        async def _determine_slot(self, command: str, *args: Any) -> int:
            if command.upper() in ("FCALL", "FCALL_RO") and len(args) > 2 and int(args[1]) > 0:
                slots = {self.keyslot(key) for key in args[2 : 2 + int(args[1])]}
                if len(slots) == 1:
                    return slots.pop()
            return int(await super()._determine_slot(command, *args))

    return Cluster  # type: ignore[no-any-return, unused-ignore]  # an Any base in 5.x


def _sentinel_connection() -> type:
    """redis-py's Sentinel connection asks the sentinels for the master in ``connect()``, but a
    send on an unconnected connection goes straight to ``connect_check_health()``, which would
    connect to the default localhost:6379. runq's own per-thread connections (scripts.py) are
    used that way, and after a failover they reconnect that way: so ask the sentinels there."""
    from redis.sentinel import SentinelManagedConnection

    class MasterConnection(SentinelManagedConnection):
        def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
            if self._sock is None and self.connection_pool.is_master:
                self.host, self.port = self.connection_pool.get_master_address()
            # 5.x has no connect_check_health (its send connects through connect(), which asks the sentinels)
            super().connect_check_health(  # type: ignore[misc, unused-ignore]
                check_health=check_health, retry_socket_connect=retry_socket_connect
            )

    return MasterConnection


class Replication:
    """``WAIT numreplicas timeout`` after a write, on the connection that made it.

    WAIT counts the replicas that have the writes of *its own connection*, so it must go
    where the write went: on one Redis or a Sentinel master, a thread's own lane (scripts.py)
    carries both; a multi-queue enqueue (MULTI/EXEC on a pooled connection) and a cluster node
    get WAIT on the pooled connection redis-py hands back first, which is the one just used
    when one thread writes (the pool is last-in first-out). With several threads writing at
    once it may be another thread's connection: then WAIT confirms that connection's writes.
    """

    def __init__(self, target: Target, client: Any, functions: Any) -> None:
        self.target = target
        self.client = client
        self.functions = functions

    def _acks(self, keys: list[str], lane: bool) -> list[tuple[str, int]]:
        n, timeout = self.target.wait_replicas, self.target.wait_timeout_ms
        if not self.target.cluster:
            if lane:
                (acked,) = self.functions.send([("WAIT", n, timeout)])
            else:
                acked = self.client.execute_command("WAIT", n, timeout)
            if isinstance(acked, Exception):
                raise acked
            return [("master", int(acked))]
        nodes = {self.client.get_node_from_key(key).name: self.client.get_node_from_key(key) for key in keys}
        return [
            (name, int(self.client.execute_command("WAIT", n, timeout, target_nodes=node)))
            for name, node in nodes.items()
        ]

    def wait(self, keys: list[str], lane: bool, strict: bool, url: str) -> None:
        """Raise (``strict``: an enqueue) or log when fewer than N replicas acknowledged in time."""
        short = [(node, acked) for node, acked in self._acks(keys, lane) if acked < self.target.wait_replicas]
        if not short:
            return
        where = ", ".join(f"{node}: {acked}" for node, acked in short)
        message = (
            f"Redis at {mask_url(url)}: the write is on the master but only ({where}) of wait_replicas="
            f"{self.target.wait_replicas} replicas acknowledged it within {self.target.wait_timeout_ms} ms;"
            " a failover now could lose it"
        )
        if strict:
            raise BrokerUnavailable(message)
        logging.getLogger("runq.broker").warning("%s", message)


__all__ = [
    "UNAVAILABLE",
    "FunctionsCluster",
    "Replication",
    "Target",
    "client",
    "parse",
    "pool_exhausted",
    "unavailable",
]


AsyncFunctionsCluster = _async_functions_cluster()
