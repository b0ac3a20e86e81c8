"""The harness's private redis-server: :class:`runq.testing.RedisServer`, the one the tests use."""

from __future__ import annotations

from runq.testing import RedisServer

__all__ = ["RedisServer"]
