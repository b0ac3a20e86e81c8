"""Brokers, chosen by URL scheme and imported lazily so SQLite users never import redis."""

from __future__ import annotations

from runq.brokers.base import Broker

DEFAULT_URL = "sqlite:///runq.db"


def connect(url: str, connect_timeout: float = 5.0) -> Broker:
    """The broker for ``url``: ``sqlite://``, ``redis://``, ``rediss://``, ``redis+cluster://``,
    ``redis+sentinel://``, ``postgresql://`` or ``memory://`` (one process's own, for tests)."""
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
        f"unsupported broker URL {url!r}: use sqlite:///file.db, redis://host:port/db,"
        " rediss://…, redis+cluster://host:port, redis+sentinel://host:port/service/db, postgresql://user@host/db"
        " or memory:// (tests, one process)"
    )


__all__ = ["DEFAULT_URL", "Broker", "connect"]
