"""SPEC §9 through ``redis+sentinel://``: every case of the flow-control conformance suite, run
on a real master that three sentinels name (the broker code is Redis's; the client is not)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import redis

import runq
from tests import test_conformance_control as suite
from tests.support.servers import RedisNotInstalled, SentinelGroup

CASES = [
    (name, case)
    for name, case in inspect.getmembers(suite, inspect.isfunction)
    if name.startswith("test_") and set(inspect.signature(case).parameters) <= {"app", "broker", "how", "broker_url"}
]


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    try:
        group = SentinelGroup(tmp_path_factory.mktemp("sentinel"), down_after=5000)  # no failover here
    except RedisNotInstalled as exc:
        pytest.skip(f"{exc} (bash .ci/run installs it)")
    yield group
    group.kill()


@pytest.mark.parametrize(("name", "case"), CASES, ids=[name for name, _ in CASES])
def test_flow_control_through_sentinel(sentinel: SentinelGroup, name: str, case: object) -> None:
    with redis.Redis(port=sentinel.master.port) as master:
        master.flushall()  # an empty broker, as the suite's fixtures give (the Functions library stays)
    app = runq.App(sentinel.url)
    try:
        arguments = {"app": app, "broker": app.broker, "how": "retry", "broker_url": sentinel.url}
        wanted = inspect.signature(case).parameters  # type: ignore[arg-type]
        case(**{key: value for key, value in arguments.items() if key in wanted})  # type: ignore[operator]
    finally:
        app.close()


def test_every_case_of_the_suite_runs_here() -> None:
    assert len(CASES) == len([name for name in dir(suite) if name.startswith("test_")]) >= 15
