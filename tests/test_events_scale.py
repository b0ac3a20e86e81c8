"""A thousand concurrent ``aevents()`` streams on Redis share connections (SPEC §10): one
subscriber per event loop and batched opening reads, so the server sees a handful of clients,
and every stream still sees its task's every change, to the end, with a real worker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import redis

import runq
from tests.conftest import WorkerProcess, wait_until

BROKER_KINDS = ["redis"]
STREAMS = 1000
MOST_CLIENTS = 8  # the producer's lane, the loop's pool and subscriber, this test's own


@pytest.mark.timeout(300)
def test_a_thousand_streams_share_a_few_connections(
    app: runq.App, broker_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    handles = app.enqueue_many([_noop(app).s()] * STREAMS)
    outcome: list[list[list[str]] | BaseException] = []

    async def follow(handle: runq.Handle[None]) -> list[str]:
        return [event.status.value async for event in handle.aevents(timeout=240)]

    async def main() -> None:
        try:
            outcome.append(await asyncio.gather(*(follow(h) for h in handles)))
        except BaseException as exc:
            outcome.append(exc)
        finally:
            await app.aclose()

    loop = threading.Thread(target=asyncio.run, args=(main(),))
    loop.start()
    try:
        with redis.Redis.from_url(broker_url) as client:
            wait_until(lambda: len(client.pubsub_channels("runq:*")) == STREAMS or not loop.is_alive(), timeout=120)
            assert len(client.pubsub_channels("runq:*")) == STREAMS
            clients = client.client_list()
        assert len(clients) <= MOST_CLIENTS, [c.get("name") or c["addr"] for c in clients]
    finally:
        start_worker(broker_url, "--pool", "thread", "--concurrency", "8")
        loop.join(240)
    [streams] = outcome
    assert not isinstance(streams, BaseException), streams
    assert streams == [["pending", "running", "succeeded"]] * STREAMS


def _noop(app: runq.App) -> runq.Task[[], None]:
    def noop() -> None:
        return None

    return app.task(name="noop")(noop)
