"""keys.py is the one definition of the Redis key and argument layout; the Lua must agree.

No Lua file numbers a key or a per-item argument itself; every ``Q.<key>`` and
``ENQ/SET/REN.<field>`` it names is defined in keys.py; each function is sent exactly
the keys keys.py gives it, and the library loads on a real Redis.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis

from runq.brokers.redis.keys import ALL, FUNCTIONS, LAYOUTS, function_keys, lua_prologue
from runq.brokers.redis.scripts import body, function_name, library
from tests.support.servers import RedisServer

LUA = resources.files("runq.brokers.redis").joinpath("lua")
SOURCES = {path.name: path.read_text() for path in LUA.iterdir() if path.name.endswith(".lua")}


def code(text: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in text.splitlines())


def test_no_lua_file_numbers_a_queue_key_or_an_item_argument() -> None:
    for name, text in SOURCES.items():
        if name in ("rate.lua", "breaker.lua", "metrics.lua"):  # one key, not a queue's layout
            continue
        assert not re.search(r"KEYS\[\d", code(text)), name
        assert not re.search(r"ARGV\[i \+ \d", code(text)), name


def test_every_key_and_field_the_lua_names_is_defined_in_python() -> None:
    for name, text in SOURCES.items():
        for key in re.findall(r"\bQ\.(\w+)", code(text)):
            assert key in ALL, (name, key)
        for table, fields in LAYOUTS.items():
            for field in re.findall(rf"\b{table}\.(\w+)", code(text)):
                assert field in fields, (name, table, field)


def test_prologue_maps_each_key_to_its_position() -> None:
    prologue = lua_prologue("enqueue_ready")
    assert "tasks = KEYS[1], payloads = KEYS[2], pending = KEYS[3]" in prologue
    assert "}, 7\n" in prologue and "ENQ, ENQ_N = {id = 0, payload = 1," in prologue
    assert len(function_keys("enqueue_ready", "q")) == 7 < len(function_keys("enqueue", "q")) == len(ALL)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_uses_only_the_keys_it_is_sent(name: str) -> None:
    sent = FUNCTIONS[name].keys
    if sent is None or FUNCTIONS[name].source != name:  # enqueue_ready: enqueue's ready-only path,
        return  # covered by every conformance test that enqueues

    used = set(re.findall(r"\bQ\.(\w+)", code(SOURCES[f"{FUNCTIONS[name].source}.lua"])))
    assert used <= set(sent), (name, used - set(sent))


def test_the_library_loads_and_a_lean_enqueue_runs(redis_server: RedisServer) -> None:
    redis_server.flush()
    with redis.Redis(port=redis_server.port) as client:
        client.function_load(library(), replace=True)
        listed = str(client.function_list())
        assert all(function_name(name) in listed for name in FUNCTIONS)
        assert client.fcall(function_name("due"), 2, *function_keys("due", "q")) == b"-1"
        assert all("KEYS" in body(name) for name in FUNCTIONS)
