"""The "valkey" broker kind is really Valkey: the broker suites (conformance, conformance-flow,
worker, workflows) run on it as one more EVERY_BROKER parameter (tests/conftest.py)."""

from __future__ import annotations

import redis

from tests.support.servers import RedisServer


def test_the_valkey_kind_runs_a_valkey_9_server(valkey_server: RedisServer) -> None:
    with redis.Redis.from_url(valkey_server.url, decode_responses=True) as client:
        info = client.info("server")
        assert info.get("server_name") == "valkey", info
        assert int(str(info["valkey_version"]).split(".")[0]) >= 9
        assert client.execute_command("FUNCTION", "LIST") is not None  # runq loads its Lua as a library
