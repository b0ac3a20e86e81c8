"""Brokers, chosen by URL scheme and imported lazily so SQLite users never import redis."""

from __future__ import annotations

from runq.brokers.base import Broker

DEFAULT_URL = "sqlite:///runq.db"


def connect(url: str, connect_timeout: float = 5.0) -> Broker:
    """The broker for ``url``: ``sqlite://``, ``redis://``, ``rediss://`` or ``redis+cluster://``."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        from runq.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, connect_timeout=connect_timeout)
    if scheme in {"redis", "rediss", "redis+cluster", "unix"}:
        from runq.brokers.redis import RedisBroker

        return RedisBroker(url, connect_timeout=connect_timeout)
    raise ValueError(
        f"unsupported broker URL {url!r}: use sqlite:///file.db, redis://host:port/db,"
        " rediss://… or redis+cluster://host:port"
    )


__all__ = ["DEFAULT_URL", "Broker", "connect"]
