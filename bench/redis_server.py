"""The harness's private redis-server: :class:`tests.support.servers.RedisServer`, the one the tests use."""

from __future__ import annotations

from tests.support.servers import RedisServer

__all__ = ["RedisServer"]
