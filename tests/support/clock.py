"""A broker whose clock a test moves forward, without sleeping.

Every broker counts time on its own clock, and reads it in one place: memory:// its offset
(``MemoryBroker.advance``), SQLite ``SQLiteBroker.clock``, Redis ``clock()`` in lib.lua (``TIME``
plus ``SHIFT``, 0 in production), PostgreSQL ``transaction_timestamp()``. :func:`clocked` opens a
broker for a URL and a :class:`Clock` that moves it:

    broker, clock = clocked(url)      # memory://, sqlite:///..., redis://, redis+cluster://, postgresql://
    clock.advance(61)                 # leases, etas, deadlines, TTLs and breakers age 61 s at once
    clock.close()                     # closes the broker and puts a shared server's clock back

How each moves, with nothing on a production path but the seams above:

- **Redis**: the library is loaded again with one more function that sets ``SHIFT`` (a local
  of the library, kept by the server's Lua between calls; every primary of a cluster has its
  own). Redis also ages keys on its real clock (idempotency keys, done lists, rate limits), so
  each move shortens every key's TTL by as much, and deletes those it runs out.
- **PostgreSQL**: the broker connects with ``search_path=<clock schema>, pg_catalog``, so its
  SQL's unqualified ``transaction_timestamp()`` finds the clock schema's function of that name
  first (PostgreSQL's documented way to override a built-in), which adds the shift kept in a
  one-row table there.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from runq.brokers import Broker, connect
from runq.brokers.memory import MemoryBroker
from runq.brokers.postgres import PostgresBroker, postgres_conninfo
from runq.brokers.redis import RedisBroker
from runq.brokers.redis.scripts import library, version
from runq.brokers.sqlite import SQLiteBroker


class Clock:
    """Moves one broker's clock forward; :meth:`close` closes the broker and undoes the move."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.shift = 0.0

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"the clock only moves forward: advance({seconds!r})")
        self.shift += seconds
        self._move(seconds)

    def _move(self, seconds: float) -> None:
        assert isinstance(self.broker, MemoryBroker)
        self.broker.advance(seconds)

    def close(self) -> None:
        self.broker.close()


class SQLiteClock(Clock):
    def __init__(self, broker: SQLiteBroker) -> None:
        super().__init__(broker)
        real = broker.clock
        broker.clock = lambda: real() + self.shift

    def _move(self, seconds: float) -> None:
        pass  # the broker's clock reads self.shift


SETTER = "runq_test_clock_" + version()


class RedisClock(Clock):
    def __init__(self, broker: RedisBroker) -> None:
        super().__init__(broker)
        self.client = broker.functions.client
        self.cluster = broker.cluster
        functions = broker.functions
        functions.load()  # the broker's own first load, so that it never loads (and resets) it again
        source = library() + (
            f"redis.register_function{{function_name='{SETTER}', flags={{'no-writes'}},"
            " callback=function(KEYS, ARGV) SHIFT = tonumber(ARGV[1]); return SHIFT end}\n"
        )
        for node in self._nodes():
            node.execute_command("FUNCTION", "LOAD", "REPLACE", source)

    def _nodes(self) -> list[Any]:
        """A client of each primary (a cluster's every one: each has its own Lua and keys)."""
        if self.cluster:
            return [node.redis_connection for node in self.client.get_primaries()]
        return [self.client]

    def _move(self, seconds: float) -> None:
        for node in self._nodes():
            node.execute_command("FCALL", SETTER, 0, repr(self.shift))
            self._age_keys(node, int(seconds * 1000))

    def _age_keys(self, node: Any, ms: int) -> None:
        """Shorten every key's TTL by ``ms`` (deleting those it runs out), as that much time would."""
        cursor: Any = 0
        while True:
            cursor, keys = node.execute_command("SCAN", cursor, "COUNT", 1000)
            for key in keys:
                left = int(node.execute_command("PTTL", key))
                if left > ms:
                    node.execute_command("PEXPIRE", key, left - ms)
                elif left >= 0:
                    node.execute_command("DEL", key)
            if int(cursor) == 0:
                break

    def close(self) -> None:
        try:
            for node in self._nodes():
                node.execute_command("FCALL", SETTER, 0, "0")  # a shared server: back to its own time
        finally:
            super().close()


class PostgresClock(Clock):
    def __init__(self, url: str) -> None:
        import psycopg

        conninfo, schema = postgres_conninfo(url)
        self.conninfo = conninfo
        self.schema = f"{schema}_clock_{secrets.token_hex(3)}"
        s = f'"{self.schema}"'
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {s}")
            conn.execute(f"CREATE TABLE {s}.shift (seconds float8 NOT NULL)")
            conn.execute(f"INSERT INTO {s}.shift VALUES (0)")
            conn.execute(
                f"CREATE FUNCTION {s}.transaction_timestamp() RETURNS timestamptz LANGUAGE sql STABLE AS"
                f" $$ SELECT pg_catalog.transaction_timestamp()"
                f" + make_interval(secs => (SELECT seconds FROM {s}.shift)) $$"
            )
        options = quote(f"-csearch_path={self.schema},pg_catalog")
        super().__init__(PostgresBroker(f"{url}{'&' if '?' in url else '?'}options={options}"))

    def _move(self, seconds: float) -> None:
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(f'UPDATE "{self.schema}".shift SET seconds = %s', (self.shift,))

    def close(self) -> None:
        import psycopg

        try:
            super().close()
        finally:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def clocked(url: str) -> tuple[Broker, Clock]:
    """A broker for ``url`` and the clock that moves it."""
    if url.startswith("postgres"):
        clock: Clock = PostgresClock(url)
        return clock.broker, clock
    broker = connect(url)
    if isinstance(broker, MemoryBroker):
        clock = Clock(broker)
    elif isinstance(broker, SQLiteBroker):
        clock = SQLiteClock(broker)
    elif isinstance(broker, RedisBroker):
        clock = RedisClock(broker)
    else:
        raise ValueError(f"no movable clock for {url!r}")
    return broker, clock
