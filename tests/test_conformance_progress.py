"""Progress and events (SPEC §10), the same on every broker: ``Broker.progress`` is fenced by
the claim's token, ``Broker.follow`` / ``Handle.events()`` / ``Handle.aevents()`` yield the
status when opened, then each change of status or progress, in order, ending after the final
status. Driven through the Broker interface as a worker would (the worker tests run real
worker processes: tests/test_progress.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

import runq
from runq.brokers import Broker
from runq.models import Claim, Event, Outcome, ProgressReport, Status
from tests.conftest import CONFORMANCE, wait_until

BROKER_KINDS = [*CONFORMANCE, "redis-acl"]  # redis-acl: the README's ACL allows its channels
WORKER = "test-worker"


def take(broker: Broker, lease: float = 30.0) -> Claim:
    [claim] = broker.claim(("default",), WORKER, 1, lease)
    return claim


def report(broker: Broker, claim: Claim, value: float | None, message: str | None = None) -> bool:
    [stored] = broker.progress([ProgressReport(claim.id, claim.token, value, message)])
    return stored


def settle(broker: Broker, claim: Claim, kind: str = "succeeded") -> None:
    outcome = Outcome(claim.id, claim.token, kind, result=json.dumps(1))  # type: ignore[arg-type]
    assert broker.settle([outcome]) == [True]


def shown(event: Event) -> tuple[str, float | None, str | None]:
    progress = event.progress
    return (
        event.status.value,
        None if progress is None else progress.value,
        None if progress is None else progress.message,
    )


# -- progress ---------------------------------------------------------------------------


def test_progress_is_stored_for_the_running_claim_and_the_latest_wins(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    assert handle.info().progress is None  # type: ignore[union-attr]
    claim = take(broker)
    before = datetime.now(timezone.utc)
    assert report(broker, claim, 0.25, "a quarter")
    assert report(broker, claim, 0.5)
    progress = handle.info().progress  # type: ignore[union-attr]
    assert progress is not None and (progress.value, progress.message) == (0.5, None)
    assert abs((progress.at - before).total_seconds()) < 30  # the broker's clock
    assert report(broker, claim, None, "only a message")
    progress = handle.info().progress  # type: ignore[union-attr]
    assert progress is not None and (progress.value, progress.message) == (None, "only a message")
    assert broker.list(Status.RUNNING, None, 10)[0].progress == progress
    assert handle.info().to_dict()["progress"] == progress.to_dict()  # type: ignore[union-attr]


def test_progress_of_a_stale_claim_is_refused(app: runq.App, broker: Broker) -> None:
    """Fenced like settle: a token that is not the task's current claim never writes."""
    handle = app.enqueue("noop")
    pending = broker.progress([ProgressReport(handle.id, "no-claim", 0.1, None)])
    assert pending == [False] and handle.info().progress is None  # type: ignore[union-attr]
    claim = take(broker)
    assert report(broker, claim, 0.3, "mine")
    wrong = broker.progress(
        [ProgressReport(claim.id, claim.token + "x", 0.9, "stale"), ProgressReport(claim.id, claim.token, 0.4, None)]
    )
    assert wrong == [False, True]
    assert handle.info().progress.value == 0.4  # type: ignore[union-attr]
    settle(broker, claim)
    assert not report(broker, claim, 0.9, "after the end")
    assert handle.info().progress.value == 0.4  # type: ignore[union-attr]  # kept with the result


def test_an_expired_attempts_progress_never_overwrites_the_next_ones(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    first = take(broker, lease=0.2)
    assert report(broker, first, 0.1, "first attempt")
    if hasattr(broker, "advance"):
        broker.advance(1.0)  # memory:// moves its clock instead of waiting
    second = wait_until(lambda: broker.claim(("default",), WORKER, 1, 30.0), timeout=15)[0]
    assert second.id == first.id and second.attempt == 2
    assert report(broker, second, 0.2, "second attempt")
    assert not report(broker, first, 0.9, "the lost first attempt, late")
    progress = handle.info().progress  # type: ignore[union-attr]
    assert progress is not None and (progress.value, progress.message) == (0.2, "second attempt")


def test_progress_of_many_claims_goes_in_one_call(app: runq.App, broker: Broker) -> None:
    handles = [app.enqueue("noop") for _ in range(3)]
    claims = broker.claim(("default",), WORKER, 3, 30.0)
    reports = [ProgressReport(c.id, c.token, i / 10, f"#{i}") for i, c in enumerate(claims)]
    assert broker.progress(reports) == [True, True, True]
    for i, claim in enumerate(claims):
        assert app.info(claim.id).progress.message == f"#{i}"  # type: ignore[union-attr]
    assert {h.id for h in handles} == {c.id for c in claims}


# -- events -----------------------------------------------------------------------------


def test_events_start_with_the_status_and_follow_each_change_to_the_end(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    events = handle.events(timeout=30)
    assert shown(next(events)) == ("pending", None, None)
    claim = take(broker)
    assert shown(next(events)) == ("running", None, None)
    report(broker, claim, 0.5, "half")
    half = next(events)
    assert shown(half) == ("running", 0.5, "half")
    report(broker, claim, 1.0, "done")
    assert shown(next(events)) == ("running", 1.0, "done")
    settle(broker, claim)
    last = next(events)
    assert shown(last) == ("succeeded", 1.0, "done")
    assert list(events) == []  # the stream ended after the final status
    assert half.at.tzinfo is not None and last.at >= half.at


def test_changes_made_while_nobody_reads_are_all_delivered(app: runq.App, broker: Broker, broker_url: str) -> None:
    """Where changes are kept (memory://) or pushed (Redis, PostgreSQL), none is lost to a
    slow reader; SQLite polls, so there changes closer together than its poll show as the latest."""
    if broker_url.startswith("sqlite"):
        pytest.skip("SQLite's feed polls the task (runq/brokers/sqlite/follow.py)")
    handle = app.enqueue("noop")
    events = handle.events(timeout=30)
    assert next(events).status is Status.PENDING
    claim = take(broker)
    report(broker, claim, 0.5, "half")
    report(broker, claim, 1.0, "done")
    settle(broker, claim)
    assert [shown(e) for e in events] == [
        ("running", None, None),
        ("running", 0.5, "half"),
        ("running", 1.0, "done"),
        ("succeeded", 1.0, "done"),
    ]


def test_a_poll_shows_the_latest_state_at_least(app: runq.App, broker: Broker) -> None:
    """Every broker: whatever a reader missed, the stream ends on the final state."""
    handle = app.enqueue("noop")
    events = handle.events(timeout=30)
    assert next(events).status is Status.PENDING
    claim = take(broker)
    report(broker, claim, 1.0, "done")
    settle(broker, claim)
    rest = list(events)
    assert shown(rest[-1]) == ("succeeded", 1.0, "done")
    assert all(e.status in (Status.RUNNING, Status.SUCCEEDED) for e in rest)


def test_events_show_retries_and_end_at_cancel(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    events = handle.events(timeout=30)
    assert next(events).status is Status.PENDING
    claim = take(broker)
    assert next(events).status is Status.RUNNING
    assert broker.settle([Outcome(claim.id, claim.token, "retry", delay=3600.0)]) == [True]
    assert next(events).status is Status.SCHEDULED
    assert handle.cancel()
    assert [e.status for e in events] == [Status.CANCELLED]


def test_a_final_task_yields_its_status_and_ends(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    settle(broker, take(broker))
    assert [e.status for e in handle.events(timeout=5)] == [Status.SUCCEEDED]


def test_a_later_follower_starts_where_it_joined(app: runq.App, broker: Broker) -> None:
    """A change the opening read already shows is not yielded again."""
    handle = app.enqueue("noop")
    early = handle.events(timeout=30)
    assert next(early).status is Status.PENDING
    claim = take(broker)
    assert shown(next(early)) == ("running", None, None)
    report(broker, claim, 0.5, "half")
    assert shown(next(early)) == ("running", 0.5, "half")
    late = handle.events(timeout=30)
    assert shown(next(late)) == ("running", 0.5, "half")
    settle(broker, claim)
    assert [shown(e) for e in late] == [("succeeded", 0.5, "half")]
    assert [shown(e) for e in early] == [("succeeded", 0.5, "half")]


def test_events_of_an_unknown_task_raise(app: runq.App) -> None:
    with pytest.raises(runq.TaskNotFound):
        next(app.handle("default.0190a3f2c4d1e8f3a9b2c7d4e5f60718").events(timeout=5))


def test_events_time_out_when_the_task_does_not_end(app: runq.App) -> None:
    events = app.enqueue("noop").events(timeout=0.3)
    assert next(events).status is Status.PENDING
    with pytest.raises(TimeoutError):
        next(events)


def test_events_wake_a_waiting_reader_from_another_thread(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    seen: list[Status] = []
    opened = threading.Event()

    def read() -> None:
        for event in handle.events(timeout=30):
            seen.append(event.status)
            opened.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert opened.wait(30)
    claim = take(broker)
    wait_until(lambda: Status.RUNNING in seen, timeout=30)
    settle(broker, claim)
    reader.join(30)
    assert seen == [Status.PENDING, Status.RUNNING, Status.SUCCEEDED]


def test_aevents_follow_the_same_changes(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")

    async def main() -> list[tuple[str, float | None, str | None]]:
        try:
            stream = handle.aevents(timeout=30)
            seen = [shown(await anext(stream))]
            claim = await asyncio.to_thread(take, broker)
            seen.append(shown(await anext(stream)))
            await asyncio.to_thread(report, broker, claim, 0.75, "most")
            seen.append(shown(await anext(stream)))
            await asyncio.to_thread(settle, broker, claim)
            seen += [shown(event) async for event in stream]
            return seen
        finally:
            await app.aclose()

    assert asyncio.run(main()) == [
        ("pending", None, None),
        ("running", None, None),
        ("running", 0.75, "most"),
        ("succeeded", 0.75, "most"),
    ]


def test_closing_a_stream_early_stops_following(app: runq.App, broker: Broker) -> None:
    handle = app.enqueue("noop")
    streams: Iterator[Event] = handle.events(timeout=30)
    assert next(streams).status is Status.PENDING
    streams.close()  # type: ignore[attr-defined]
    settle(broker, take(broker))  # nothing follows it any more, and nothing breaks
    assert [e.status for e in handle.events(timeout=5)] == [Status.SUCCEEDED]
