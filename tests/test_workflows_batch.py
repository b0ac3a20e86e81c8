"""Batches (SPEC §11): ``runq.batch(members, on_complete=, on_success=, on_failure=)``.

Each callback runs once, on what became of every member: on memory:// with ``app.drain()``
(Hypothesis draws the members' ends and queues), on every broker through ``drain()``, and with
real workers on SQLite, Redis, a Redis Cluster and PostgreSQL, members on several queues
served by different workers. The broker mode underneath (``after_final``) has its own
conformance tests (test_conformance_flow.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runq
from runq.models import Message, Status
from runq.workflow import BATCH, DependencyError, batch_summary
from tests.conftest import WITH_POSTGRES, WorkerProcess, wait_until

BROKER_KINDS = [*WITH_POSTGRES, "redis-cluster", "memory"]

StartWorker = Callable[..., WorkerProcess]
THREADS = ("--pool", "thread", "--concurrency", "4")


class Shop:
    """An App with a few tasks, whose callbacks note each run in ``runs`` (drain runs them here)."""

    def __init__(self, url: str) -> None:
        self.app = runq.App(url)
        self.runs: list[tuple[str, Any]] = []

        @self.app.task
        def double(x: int) -> int:
            return 2 * x

        @self.app.task(retries=2, backoff=0.01)
        def broken(x: int) -> None:
            raise RuntimeError(f"{x} is broken")

        @self.app.task(retries=0)
        def doomed(x: int) -> None:
            raise RuntimeError(f"{x} is doomed")

        @self.app.task
        def report(value: Any, label: str) -> str:
            self.runs.append((label, value))
            return label

        self.double, self.broken, self.doomed, self.report = double, broken, doomed, report

    def callbacks(self) -> dict[str, runq.Signature]:
        return {name: self.report.s(name) for name in ("on_complete", "on_success", "on_failure")}


@pytest.fixture
def shop(broker_url: str) -> Iterator[Shop]:
    made = Shop(broker_url)
    yield made
    made.app.close()


@pytest.fixture
def memory() -> Iterator[Shop]:
    made = Shop("memory://")
    yield made
    made.app.close()


def summary(
    succeeded: Sequence[str] = (), failed: Sequence[str] = (), cancelled: Sequence[str] = ()
) -> dict[str, list[str]]:
    return {"succeeded": list(succeeded), "failed": list(failed), "cancelled": list(cancelled)}


# -- bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused_where_the_batch_is_written(memory: Shop) -> None:
    ok = memory.double.s(1)
    with pytest.raises(ValueError, match="at least one"):
        runq.batch([])
    with pytest.raises(ValueError, match="at least one"):
        runq.batch()
    for member in (memory.double, memory.app.handle(f"default.{0:032x}"), runq.chain(ok), runq.group(ok), 7):
        with pytest.raises(TypeError, match="batch members are signatures"):
            runq.batch([ok, member])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="batch members are signatures"):
        runq.batch(memory.double)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"on_complete takes a signature \(task.s\(...\)\), got Task"):
        runq.batch([ok], on_complete=memory.report)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_failure takes a signature"):
        runq.batch([ok], on_failure=runq.chain(memory.report.s("x")))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="bound to an App"):
        runq.batch([runq.Signature("double", (1,))]).delay()
    with pytest.raises(TypeError, match="cannot take these arguments"):  # the summary comes first
        runq.batch([ok], on_complete=memory.double.s(1)).delay()
    assert memory.app.stats().counters.get("enqueued", 0) == 0  # nothing was sent


# -- every broker, through drain() ---------------------------------------------------------------


def test_all_succeed_on_complete_and_on_success_run_once(shop: Shop) -> None:
    handle = runq.batch(
        [shop.double.s(1), shop.double.s(2).options(queue="b"), shop.double.s(3).options(queue="c")],
        **shop.callbacks(),
    ).delay()
    assert isinstance(handle, runq.BatchHandle) and len(handle) == 3
    assert handle.status() == {**summary(), "unfinished": handle.ids}
    shop.app.drain()
    done = summary(succeeded=handle.ids)
    assert sorted(shop.runs, key=str) == [("on_complete", done), ("on_success", [2, 4, 6])]
    assert handle.status() == done and handle.summary(timeout=5) == done
    assert handle.results(timeout=5) == [2, 4, 6]
    assert handle.on_failure is not None and handle.on_failure.status() is Status.CANCELLED
    summary_step = shop.app.info(handle.id)
    assert summary_step is not None and summary_step.name == BATCH and summary_step.queue == "default"


def test_a_failed_and_a_cancelled_member_run_on_complete_and_on_failure_once(shop: Shop) -> None:
    later = shop.double.s(3).options(queue="c", delay=3600)
    handle = runq.batch([shop.double.s(1), shop.doomed.s(2).options(queue="b"), later], **shop.callbacks()).delay()
    ok, bad, dropped = handle.ids
    assert handle.members.handles[2].cancel()
    shop.app.drain()
    done = summary(succeeded=[ok], failed=[bad], cancelled=[dropped])
    assert sorted(shop.runs, key=str) == [("on_complete", done), ("on_failure", done)]
    assert handle.status() == done
    assert handle.on_success is not None
    with pytest.raises(runq.TaskCancelled, match=f"parent task {dropped} was cancelled"):  # the first not to succeed
        handle.on_success.result(timeout=5)
    with pytest.raises(runq.TaskFailed):
        handle.results(timeout=5)


def test_cancelling_the_batch_cancels_its_unfinished_members_and_completes_it(shop: Shop) -> None:
    handle = runq.batch(
        [shop.double.s(1), shop.double.s(2).options(delay=3600, queue="b")], on_complete=shop.report.s("done")
    ).delay()
    shop.app.drain(queues="default")  # the first member only: the second is an hour away
    assert handle.cancel() == 1 and handle.cancel() == 0
    shop.app.drain()
    first, second = handle.ids
    assert shop.runs == [("done", summary(succeeded=[first], cancelled=[second]))]


def test_a_batch_in_a_chain_a_group_and_a_chord(shop: Shop) -> None:
    """A batch is one step whose result is its summary; its members get the step before's result."""
    members = [shop.double.s(), shop.double.s().options(queue="b")]
    last = runq.chain(shop.double.s(5), runq.batch(members), shop.report.s("after")).delay()
    group = runq.group(runq.batch([shop.double.s(1)]), shop.double.s(2)).delay()
    chord = runq.chord([runq.batch([shop.double.s(3)]), shop.double.s(4)], shop.report.s("chord")).delay()
    shop.app.drain()
    assert last.result(timeout=5) == "after"
    value = dict(shop.runs)["after"]
    assert len(value["succeeded"]) == 2 and value["failed"] == value["cancelled"] == []
    results = [shop.app.handle(task_id).result(timeout=5) for task_id in value["succeeded"]]
    assert results == [20, 20]  # each member got 10 first
    inner, doubled = group.results(timeout=5)
    assert len(inner["succeeded"]) == 1 and doubled == 4
    assert chord.result(timeout=5) == "chord"
    chord_value = next(run[1] for run in shop.runs if run[0] == "chord")
    assert len(chord_value[0]["succeeded"]) == 1 and chord_value[1] == 8


def test_a_failed_step_before_a_batch_cancels_its_members_and_the_batch_completes(shop: Shop) -> None:
    last = runq.chain(shop.doomed.s(1), runq.batch([shop.double.s()], **shop.callbacks()), shop.report.s("after"))
    handle = last.delay()
    shop.app.drain()
    assert handle.result(timeout=5) == "after"  # a batch never fails: the step after it runs
    labels = sorted(label for label, _ in shop.runs)
    assert labels == ["after", "on_complete", "on_failure"]
    value = dict(shop.runs)["on_complete"]
    assert value["succeeded"] == value["failed"] == [] and len(value["cancelled"]) == 1


# -- memory:// only: retries drained at once, Hypothesis, the summary step itself -----------------


def test_drain_runs_a_batch_whose_member_fails_after_its_retries(memory: Shop) -> None:
    handle = runq.batch([memory.double.s(1), memory.broken.s(2).options(queue="b")], **memory.callbacks()).delay()
    result = memory.app.drain(scheduled=True)
    assert result.retried == 2 and result.failed == 1
    failed = memory.app.info(handle.ids[1])
    assert failed is not None and failed.attempts == 3
    done = summary(succeeded=handle.ids[:1], failed=handle.ids[1:])
    assert sorted(memory.runs, key=str) == [("on_complete", done), ("on_failure", done)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ends=st.lists(st.sampled_from(["succeeds", "fails", "cancelled"]), min_size=1, max_size=6),
    queues=st.lists(st.sampled_from(["default", "b", "c"]), min_size=6, max_size=6),
    wanted=st.sets(st.sampled_from(["on_complete", "on_success", "on_failure"])),
)
def test_each_callback_runs_once_with_its_argument(ends: list[str], queues: list[str], wanted: set[str]) -> None:
    shop = Shop("memory://")
    members = []
    for i, (end, queue) in enumerate(zip(ends, queues, strict=False)):
        task = shop.double if end != "fails" else shop.broken
        members.append(task.s(i).options(queue=queue, **({"delay": 60} if end == "cancelled" else {})))
    callbacks = {name: sig for name, sig in shop.callbacks().items() if name in wanted}
    handle = runq.batch(members, **callbacks).delay()
    for member, end in zip(handle.members.handles, ends, strict=True):
        if end == "cancelled":
            assert member.cancel()
    shop.app.drain(scheduled=True)
    done = {"succeeded": [], "failed": [], "cancelled": []} | {
        key: [task_id for task_id, end in zip(handle.ids, ends, strict=True) if end == name]
        for key, name in (("succeeded", "succeeds"), ("failed", "fails"), ("cancelled", "cancelled"))
    }
    expected = [("on_complete", done)] if "on_complete" in wanted else []
    if set(ends) == {"succeeds"}:
        expected += [("on_success", [2 * i for i in range(len(ends))])] if "on_success" in wanted else []
    elif "on_failure" in wanted:
        expected.append(("on_failure", done))
    assert sorted(shop.runs, key=str) == sorted(expected, key=str)
    assert handle.status() == done == handle.summary(timeout=0)
    shop.app.close()


def test_the_summary_step_run_twice_changes_nothing_more(memory: Shop) -> None:
    """A worker that dies after the summary step cancelled on_failure runs it again: same summary."""
    handle = runq.batch([memory.double.s(1)], **memory.callbacks()).delay()
    memory.app.drain()
    assert handle.on_failure is not None and handle.on_failure.status() is Status.CANCELLED
    step = Message(handle.id, BATCH, "default", args=[handle.on_failure.id], after=tuple(handle.ids), after_final=True)
    assert batch_summary(memory.app.broker, step) == summary(succeeded=handle.ids)
    assert memory.app.stats().counters["cancelled"] == 1
    assert sorted(label for label, _ in memory.runs) == ["on_complete", "on_success"]


def test_a_member_gone_before_the_summary_step_fails_it_and_cancels_its_callbacks(memory: Shop) -> None:
    """Results must outlive the batch (result_ttl): a member purged before the summary step ran
    leaves it unable to say how that member ended."""
    handle = runq.batch([memory.double.s(1), memory.double.s(2).options(queue="b")], **memory.callbacks()).delay()
    memory.app.drain(queues="b")  # the second member only
    assert memory.app.purge("succeeded", queue="b") == 1
    memory.app.drain()
    gone = handle.ids[1]
    with pytest.raises(runq.TaskFailed, match=f"batch member {gone} is gone"):
        handle.summary(timeout=0)
    with pytest.raises(DependencyError, match=f"batch member {gone} is gone"):
        batch_summary(memory.app.broker, Message(handle.id, BATCH, "default", after=tuple(handle.ids)))
    for callback in (handle.on_complete, handle.on_failure):
        assert callback is not None and callback.status() is Status.CANCELLED
    assert handle.on_success is not None and handle.on_success.status() is Status.FAILED  # its parent's result is gone
    assert memory.runs == []


def test_an_older_sqlite_database_gets_the_dependency_mode_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    made = runq.App(url)
    made.stats()  # the schema is made on first use
    made.close()
    with sqlite3.connect(tmp_path / "old.db") as db:  # runq_deps as runq made it before batches
        db.executescript(
            "DROP TABLE runq_deps; CREATE TABLE runq_deps (parent TEXT NOT NULL, child TEXT NOT NULL,"
            " PRIMARY KEY (parent, child)) WITHOUT ROWID; CREATE INDEX runq_deps_child ON runq_deps (child);"
        )
    shop = Shop(url)
    handle = runq.batch([shop.doomed.s(1)], on_complete=shop.report.s("done")).delay()
    shop.app.drain()
    assert shop.runs == [("done", summary(failed=handle.ids))]
    shop.app.close()


# -- real workers: members on several queues, served by different workers --------------------------


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def final(app: runq.App, handle: runq.Handle[Any] | None) -> runq.TaskInfo:
    assert handle is not None
    info = app.broker.wait(handle.id, 60)
    assert info is not None and info.status.final, info
    return info


def callbacks(app: runq.App, path: Path) -> dict[str, runq.Signature]:
    return {
        name: runq.Signature("record", (str(path), name), app=app).options(queue="c")
        for name in ("on_complete", "on_success", "on_failure")
    }


def test_workers_run_each_callback_once_when_every_member_succeeds(
    app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    if broker_url.startswith("memory"):
        pytest.skip("memory:// has no worker process (drain() runs its batches above)")
    start_worker(broker_url, *THREADS, "--queues", "default,a")
    start_worker(broker_url, *THREADS, "--queues", "b,c")
    path = tmp_path / "runs.jsonl"
    members = [runq.Signature("add", (i, i), app=app).options(queue=q) for i, q in enumerate("aab")]
    handle = runq.batch(members, **callbacks(app, path)).delay()
    done = summary(succeeded=handle.ids)
    assert handle.summary(timeout=60) == done
    for callback in (handle.on_complete, handle.on_success):
        assert final(app, callback).status is Status.SUCCEEDED and final(app, callback).attempts == 1
    assert final(app, handle.on_failure).status is Status.CANCELLED
    assert sorted(lines(path), key=str) == sorted(
        [{"label": "on_complete", "value": done}, {"label": "on_success", "value": [0, 2, 4]}], key=str
    )
    assert handle.results(timeout=5) == [0, 2, 4]


def test_workers_run_each_callback_once_when_members_fail_and_are_cancelled(
    app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    if broker_url.startswith("memory"):
        pytest.skip("memory:// has no worker process (drain() runs its batches above)")
    start_worker(broker_url, *THREADS, "--queues", "default,a")
    start_worker(broker_url, *THREADS, "--queues", "b,c")
    path, started = tmp_path / "runs.jsonl", tmp_path / "started"
    members = [
        runq.Signature("add", (1, 1), app=app),
        runq.Signature("flaky", (99,), app=app).options(queue="a"),  # fails after its 3 retries
        runq.Signature("touch_then_sleep", (str(started), 60), app=app).options(queue="b"),  # cancelled mid-run
    ]
    handle = runq.batch(members, **callbacks(app, path)).delay()
    ok, bad, dropped = handle.ids
    wait_until(started.exists, 30)
    assert handle.members.handles[2].cancel()
    done = summary(succeeded=[ok], failed=[bad], cancelled=[dropped])
    assert handle.summary(timeout=60) == done
    assert final(app, handle.members.handles[1]).attempts == 4
    for callback in (handle.on_complete, handle.on_failure):
        assert final(app, callback).status is Status.SUCCEEDED and final(app, callback).attempts == 1
    skipped = final(app, handle.on_success)
    assert (
        skipped.status is Status.CANCELLED and skipped.error is not None and skipped.error["parent"] in (bad, dropped)
    )
    assert sorted(lines(path), key=str) == sorted(
        [{"label": "on_complete", "value": done}, {"label": "on_failure", "value": done}], key=str
    )
    assert handle.status() == done
