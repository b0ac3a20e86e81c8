"""Brokers, chosen by URL scheme and imported lazily so SQLite users never import redis."""

from __future__ import annotations

from runq.brokers.aio import AsyncBroker, ThreadedBroker
from runq.brokers.base import Broker
from runq.logs import hide, mask_url
from runq.settings import DEFAULT_URL


def connect(url: str, connect_timeout: float = 5.0) -> Broker:
    """The broker for ``url``: ``sqlite://``, ``redis://``, ``rediss://``, ``redis+cluster://``,
    ``redis+sentinel://``, ``postgresql://`` or ``memory://`` (one process's own, for tests)."""
    hide(url)  # its passwords never reach a log line, whatever echoes them
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        from runq.brokers.memory import MemoryBroker

        return MemoryBroker(url)
    if scheme == "sqlite":
        from runq.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, connect_timeout=connect_timeout)
    if scheme in {"redis", "rediss", "redis+cluster", "redis+sentinel", "unix"}:
        from runq.brokers.redis import RedisBroker

        return RedisBroker(url, connect_timeout=connect_timeout)
    if scheme in {"postgresql", "postgres"}:
        try:
            from runq.brokers.postgres import PostgresBroker
        except ImportError as exc:
            raise ImportError(
                f"{url.partition(':')[0]}:// needs the postgres extra: pip install 'runq[postgres]'"
            ) from exc

        return PostgresBroker(url, connect_timeout=connect_timeout)
    raise ValueError(
        f"unsupported broker URL {mask_url(url)!r}: use sqlite:///file.db, redis://host:port/db,"
        " rediss://…, redis+cluster://host:port, redis+sentinel://host:port/service/db, postgresql://user@host/db"
        " or memory:// (tests, one process)"
    )


def asynchronous(broker: Broker, connect_timeout: float = 5.0) -> AsyncBroker:
    """The asyncio edge of ``broker``: native redis.asyncio on Redis, a thread adapter for the
    others. Builds no connection."""
    if broker.kind == "redis":
        from runq.brokers.redis.aio import AsyncRedisBroker
        from runq.brokers.redis.broker import RedisBroker

        assert isinstance(broker, RedisBroker)
        return AsyncRedisBroker(broker, connect_timeout)
    return ThreadedBroker(broker)


__all__ = ["DEFAULT_URL", "Broker", "asynchronous", "connect"]
