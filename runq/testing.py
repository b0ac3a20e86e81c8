"""A private ``redis-server`` on a free port, for tests and benchmarks.

Tests must never use a Redis someone else runs (let alone flush it): this starts one
of your own, with no persistence unless you ask for it, and stops it afterwards.

    server = RedisServer(tmp_path)                  # or RedisServer(tmp_path, "--appendonly", "yes")
    server = RedisServer(tmp_path, tls=TLS(cert, key, ca))   # TLS only: server.url is rediss://localhost
    app = runq.App(server.url)
    ...
    server.kill()
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import NamedTuple


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisNotInstalled(RuntimeError):
    """There is no ``redis-server`` on PATH."""


class TLS(NamedTuple):
    """PEM files for a TLS-only server: its certificate and key, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


class RedisServer:
    """A redis-server process of its own; ``restart()`` keeps its port and data directory."""

    def __init__(self, directory: Path, *extra: str, tls: TLS | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RedisNotInstalled("redis-server is not installed (bash scripts/install-redis-server.sh)")
        self.port = free_port()
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
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the private redis-server did not answer within {timeout}s")
            time.sleep(0.01)

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


# The least a runq user needs on Redis (README, "Running Redis in production"); the conformance
# suite runs as a user made with exactly these rules, and a test checks the README shows them.
REDIS_ACL = (
    "resetkeys ~runq:* resetchannels -@all +ping +time +select +multi +exec +fcall +function|load"
    " +blpop +get +set +del +hget +hgetall +hmget +hset +hdel +hexists +hincrby +hincrbyfloat +hkeys +hlen +lpush"
    " +rpush +lrange +ltrim +pexpire +incr +incrby +sadd +smembers +srem +zadd +zcard +zrange +zrangebyscore"
    " +zrevrange +zrem +zscore"
)


def add_acl_user(server: RedisServer, user: str, password: str, rules: str = REDIS_ACL) -> str:
    """Create (or reset) ``user`` with ``rules`` on ``server``; returns the URL that logs in as it."""
    import redis

    with redis.Redis.from_url(server.url) as client:
        client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules.split())
    scheme, _, rest = server.url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"
