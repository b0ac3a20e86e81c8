"""The Lua side: one Redis Functions library, loaded once, called with ``FCALL``.

Each function of :data:`keys.FUNCTIONS` is its generated prologue (keys.py), ``lua/lib.lua``
and ``lua/<source>.lua``. The library and its function names carry a hash of their code,
so processes of different runq versions never call each other's code, and a library
lost with a Redis restart (no persistence) is loaded again on the first ``Function not
found`` (the call did not run, so running it again is safe).

Redis / Valkey before 7.0 have no Functions: the same code is then run as scripts
(``EVALSHA``, loaded on ``NOSCRIPT``).

On Redis Cluster no function is ever pipelined: the calls of a batch go one by one, each
to the node that owns its keys' slot (redis-py follows MOVED / ASK).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError, ResponseError

from runq.brokers.redis.keys import FUNCTIONS, lua_prologue


@cache
def _lua(name: str) -> str:
    return resources.files("runq.brokers.redis").joinpath("lua").joinpath(f"{name}.lua").read_text()


@cache
def body(name: str) -> str:
    """The Lua of function ``name`` (KEYS and ARGV as its inputs)."""
    return lua_prologue(name) + _lua("lib") + _lua(FUNCTIONS[name].source)


@cache
def version() -> str:
    text = "\n".join(body(name) for name in sorted(FUNCTIONS))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def function_name(name: str) -> str:
    return f"runq_{name}_{version()}"


@cache
def library() -> str:
    """The ``FUNCTION LOAD`` source: every function, each in its own Lua scope."""
    parts = [f"#!lua name=runq_{version()}"]
    for name in FUNCTIONS:
        parts.append(f"redis.register_function('{function_name(name)}', function(KEYS, ARGV)\n{body(name)}\nend)")
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


class Functions:
    """Runs runq's functions on one client (standalone or cluster)."""

    def __init__(self, client: Any, cluster: bool) -> None:
        self.client = client
        self.cluster = cluster
        self.mode: str | None = None  # "function" or "script", learnt on the first call
        self._shas: dict[str, str] = {}

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

    def _recover(self, call: Call, error: BaseException) -> Any:
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
        try:
            return self.client.execute_command(*self._command(call))
        except (ResponseError, NoScriptError) as exc:
            return self._recover(call, exc)

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
        pipe = self.client.pipeline(transaction=atomic)
        for call in calls:
            pipe.execute_command(*self._command(call))
        for command in commands:
            pipe.execute_command(*command)
        results = list(pipe.execute(raise_on_error=False))
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                results[i] = self._recover(calls[i], result) if i < len(calls) else _raise(result)
        return results

    def command(self, call: Call) -> tuple[Any, ...]:
        """The raw command of ``call``, for a pipeline of the caller's own (standalone only)."""
        self._ensure()
        return self._command(call)


def _raise(error: Exception) -> Any:
    raise error


__all__ = ["Call", "Functions", "body", "function_name", "library"]
