"""The Lua side: one Redis Functions library, loaded once, called with ``FCALL``.

The library defines ``lua/lib.lua``'s helpers once, at load; each function of
:data:`keys.FUNCTIONS` points them at its keys (generated from keys.py) and runs
``lua/<source>.lua``. (Rebuilding the helpers on every call, as a script must, cost
~4 of the ~19 µs of Redis CPU a single enqueue took.) The library and its function names
carry a hash of their code, so processes of different runq versions never call each other's code, and a library
lost with a Redis restart (no persistence) is loaded again on the first ``Function not
found`` (the call did not run, so running it again is safe).

Redis / Valkey before 7.0 have no Functions: the same code is then run as scripts
(``EVALSHA``, loaded on ``NOSCRIPT``).

On a single Redis, calls go over a connection each thread keeps for itself (a "lane"):
one write and one read per round trip, without redis-py's per-command pool checkout,
retry wrapper and health checks, which cost as much CPU as the round trip itself.
On Redis Cluster no function is ever pipelined: the calls of a batch go one by one, each
to the node that owns its keys' slot (redis-py follows MOVED / ASK).
"""

from __future__ import annotations

import hashlib
import os
import select
import ssl
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from runq.brokers.redis.keys import FUNCTIONS, lua_keys, lua_layouts, lua_prologue

# redis-py encodes each argument in Python before hiredis packs it; packing with hiredis alone
# took a fifth of a single enqueue's producer CPU off (80 vs 103 µs, interleaved, loaded machine).
_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # hiredis is a dependency (redis[hiredis]), but a bare redis-py works too
    _pack_command = None


@cache
def _lua(name: str) -> str:
    return resources.files("runq.brokers.redis").joinpath("lua").joinpath(f"{name}.lua").read_text()


@cache
def body(name: str) -> str:
    """The Lua of function ``name`` as a standalone script (KEYS and ARGV as its inputs)."""
    return lua_prologue(name) + _lua("lib") + "begin()\n" + _lua(FUNCTIONS[name].source)


@cache
def version() -> str:
    text = "\n".join(body(name) for name in sorted(FUNCTIONS)) + "\nlibrary: shared helpers"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def function_name(name: str) -> str:
    return f"runq_{name}_{version()}"


@cache
def library() -> str:
    """The ``FUNCTION LOAD`` source: the shared helpers once, then every function."""
    parts = [f"#!lua name=runq_{version()}", "local Q, EXTRA, QUEUE", lua_layouts(), _lua("lib")]
    for name in FUNCTIONS:
        parts.append(
            f"redis.register_function('{function_name(name)}', function(KEYS, ARGV)\n"
            f"{lua_keys(name, declare=False)}begin()\n{_lua(FUNCTIONS[name].source)}\nend)"
        )
    return "\n".join(parts) + "\n"


def _missing(error: BaseException) -> bool:
    return isinstance(error, ResponseError) and "function not found" in str(error).lower()


def _no_functions(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, ResponseError) and "unknown command" in text and "function" in text


class Call(NamedTuple):
    name: str
    keys: Sequence[str]
    args: Sequence[Any]


class _Lane(threading.local):
    """A thread's own connection, made from the client's pool settings (auth, TLS, db)."""

    connection: Any = None
    pid = 0
    generation = 0
    client_id: int | None = None  # the server's CLIENT ID of the socket id_of
    id_of: Any = None


def _disconnect_all(lanes: dict[int, Any]) -> None:
    for connection in lanes.values():
        connection.disconnect()
    lanes.clear()


def _reconnect_if_closed(connection: Any) -> None:
    """Drop a lane the server closed while it was idle (a restart): nothing was sent on it
    yet, so the next send may reconnect safely. Stray unread data is treated the same way.

    A plain socket is asked with one zero-timeout ``select`` (a system call, ~1 µs); a TLS one
    through redis-py, whose check costs a few µs more.
    """
    sock = connection._sock
    if isinstance(sock, ssl.SSLSocket):
        try:
            stale = connection.can_read()
        except (ConnectionError, OSError, RedisConnectionError):
            stale = True
    else:
        try:  # readable with nothing asked: closed (EOF), or a reply nobody read
            stale = bool(select.select((sock,), (), (), 0)[0])
        except (OSError, ValueError):
            stale = True
    if stale:
        connection.disconnect()


class Functions:
    """Runs runq's functions on one client (standalone or cluster)."""

    def __init__(self, client: Any, cluster: bool) -> None:
        self.client = client
        self.cluster = cluster
        self.mode: str | None = None  # "function" or "script", learnt on the first call
        self._shas: dict[str, str] = {}
        self._lane = _Lane()
        # Every lane by thread, so that close() (or, for a broker nobody closed, the garbage
        # collector through the finalizer, which holds this dict) closes their sockets.
        self._lanes: dict[int, Any] = {}
        self._lanes_lock = threading.Lock()
        self._generation = 1  # bumped by close(): lanes made before are made again
        weakref.finalize(self, _disconnect_all, self._lanes)

    def _connection(self) -> Any:
        lane = self._lane
        if lane.generation != self._generation or lane.pid != os.getpid():  # a fork never shares a socket
            lane.connection = self.client.connection_pool.make_connection()
            lane.pid, lane.generation = os.getpid(), self._generation
            with self._lanes_lock:
                live = {thread.ident for thread in threading.enumerate()}
                for ident in [ident for ident in self._lanes if ident not in live]:  # their threads ended
                    self._lanes.pop(ident).disconnect()
                self._lanes[threading.get_ident()] = lane.connection
        return lane.connection

    def send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write on this thread's lane and read every reply; an
        error reply comes back as its exception, in its place (standalone only).

        A connection failure disconnects the lane (the next call reconnects) and raises:
        the commands may have run, so nothing is sent again here.
        """
        connection = self._connection()
        if connection._sock is not None:
            _reconnect_if_closed(connection)
        connection.send_packed_command(_packed(connection, commands), check_health=False)
        callbacks = self.client.response_callbacks
        replies: list[Any] = []
        for command in commands:
            try:
                reply = connection.read_response()
            except ResponseError as exc:
                replies.append(exc)
                continue
            callback = callbacks.get(command[0])  # as redis-py's own commands answer (BLPOP: a tuple)
            replies.append(reply if callback is None else callback(reply))
        return replies

    def client_id(self) -> int | None:
        """This thread's lane's ``CLIENT ID`` (asked once per socket), the name ``CLIENT
        UNBLOCK`` needs; ``None`` where the server refuses it (an ACL without the command)."""
        lane = self._lane
        connection = self._connection()
        if lane.id_of is not connection._sock or connection._sock is None:
            (reply,) = self.send([("CLIENT", "ID")])
            lane.client_id = None if isinstance(reply, Exception) else int(reply)
            lane.id_of = connection._sock
        return lane.client_id

    def close(self) -> None:
        with self._lanes_lock:
            self._generation += 1
            _disconnect_all(self._lanes)

    def _ensure(self) -> None:
        if self.mode is None:
            self.load()

    def load(self) -> None:
        """Load the library (every primary on a cluster); fall back to scripts without Functions."""
        try:
            self.client.function_load(library(), replace=True)
            self.mode = "function"
        except ResponseError as exc:
            if not _no_functions(exc):
                raise
            self.mode = "script"

    def _command(self, call: Call) -> tuple[Any, ...]:
        if self.mode == "function":
            return ("FCALL", function_name(call.name), len(call.keys), *call.keys, *call.args)
        sha = self._shas.get(call.name) or hashlib.sha1(body(call.name).encode()).hexdigest()
        self._shas[call.name] = sha
        return ("EVALSHA", sha, len(call.keys), *call.keys, *call.args)

    def recover(self, call: Call, error: BaseException) -> Any:
        """Run ``call`` again after its code went missing (a Redis restart); else re-raise."""
        if _missing(error):
            self.load()
        elif isinstance(error, NoScriptError):
            self.client.script_load(body(call.name))
        else:
            raise error
        return self.client.execute_command(*self._command(call))

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        self._ensure()
        call = Call(name, keys, args)
        if not self.cluster:
            (reply,) = self.send([self._command(call)])
            return self.recover(call, reply) if isinstance(reply, Exception) else reply
        try:
            return self.client.execute_command(*self._command(call))
        except (ResponseError, NoScriptError) as exc:
            return self.recover(call, exc)

    def batch(self, calls: Sequence[Call], commands: Sequence[tuple[Any, ...]] = (), atomic: bool = False) -> list[Any]:
        """Run ``calls`` then plain keyed ``commands``; one round trip where Redis allows it.

        ``atomic`` (several queues on one standalone Redis) wraps them in MULTI/EXEC. On a
        cluster the calls go one by one to their slot's node and the commands in a cluster
        pipeline (redis-py splits it per node).
        """
        self._ensure()
        if self.cluster or (len(calls) == 1 and not commands):
            results = [self.run(*call) for call in calls]
            if commands:
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                results += pipe.execute()
            return results
        if atomic:
            pipe = self.client.pipeline(transaction=True)
            for call in calls:
                pipe.execute_command(*self._command(call))
            for command in commands:
                pipe.execute_command(*command)
            results = list(pipe.execute(raise_on_error=False))
        else:
            results = self.send([*(self._command(call) for call in calls), *commands])
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                results[i] = self.recover(calls[i], result) if i < len(calls) else _raise(result)
        return results

    def command(self, call: Call) -> tuple[Any, ...]:
        """The raw command of ``call``, for a pipeline of the caller's own (standalone only)."""
        self._ensure()
        return self._command(call)


def _packed(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """The commands in RESP, packed by hiredis in one C call each (the same bytes redis-py
    writes: str as UTF-8, numbers as their repr). hiredis does not split a two-word command name
    ("FUNCTION LOAD") as redis-py does: only runq's own one-word commands come this way."""
    if _pack_command is None:
        return list(connection.pack_commands(commands))
    return [_pack_command(command) for command in commands]


def _raise(error: Exception) -> Any:
    raise error


__all__ = ["Call", "Functions", "body", "function_name", "library"]
