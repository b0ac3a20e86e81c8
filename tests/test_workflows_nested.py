"""Nested workflows (SPEC §11): a member of a chain, group or chord may itself be one.

Hypothesis builds random trees of small tasks on memory:// (``app.drain()``, no worker) and
checks each final result against a pure-Python evaluation of the same tree; a few fixed trees
then run on every broker with a real worker, across queues (Redis Cluster included).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runq
from runq.models import Status
from tests.conftest import EVERY_BROKER, WorkerProcess

BROKER_KINDS = EVERY_BROKER

StartWorker = Callable[..., WorkerProcess]
THREADS = ("--pool", "thread", "--concurrency", "4")


# -- a tree, evaluated in pure Python and built as a runq workflow ---------------------------------


@dataclass(frozen=True)
class Leaf:
    label: int
    fails: bool = False


@dataclass(frozen=True)
class Node:
    kind: str  # "chain" | "group" | "chord"
    members: tuple[Tree, ...]
    callback: Tree | None = None  # a chord's


Tree: TypeAlias = Leaf | Node


class Failed(Exception):
    """The pure evaluation reached a failing leaf."""


def evaluate(tree: Tree, given: tuple[Any, ...] = ()) -> Any:
    """What the workflow must compute: each step gets the previous result (if any) first."""
    if isinstance(tree, Leaf):
        if tree.fails:
            raise Failed
        return [*given, tree.label]
    if tree.kind == "chain":
        value: Any = None
        for member in tree.members:
            value = evaluate(member, given)
            given = (value,)
        return value
    results = [evaluate(member, given) for member in tree.members]
    if tree.kind == "group":
        return results
    assert tree.callback is not None
    return evaluate(tree.callback, (results,))


def build(app: runq.App, tree: Tree) -> Any:
    if isinstance(tree, Leaf):
        return runq.Signature("boom" if tree.fails else "tag", (tree.label,), app=app)
    members = [build(app, member) for member in tree.members]
    if tree.kind == "chain":
        return runq.chain(*members)
    if tree.kind == "group":
        return runq.group(members)
    assert tree.callback is not None
    return runq.chord(members, build(app, tree.callback))


def memory_app() -> runq.App:
    app = runq.App("memory://")

    @app.task(name="tag")
    def tag(*args: Any) -> list[Any]:
        return list(args)

    @app.task(name="boom", retries=0)
    def boom(*args: Any) -> None:
        raise RuntimeError("boom")

    return app


def has_a_leaf(tree: Tree) -> bool:
    """A workflow finds its App through its signatures: one without any has none to run on."""
    if isinstance(tree, Leaf):
        return True
    return any(has_a_leaf(member) for member in (*tree.members, *([tree.callback] if tree.callback else [])))


labels = st.integers(0, 99)
leaves = st.builds(Leaf, labels, st.sampled_from([False] * 9 + [True]))
trees: st.SearchStrategy[Tree] = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(Node, st.just("chain"), st.lists(children, min_size=1, max_size=3).map(tuple)),
        st.builds(Node, st.just("group"), st.lists(children, max_size=3).map(tuple)),
        st.builds(Node, st.just("chord"), st.lists(children, max_size=3).map(tuple), children),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees.filter(lambda tree: isinstance(tree, Node) and has_a_leaf(tree)))
def test_a_random_nested_workflow_computes_what_python_does(tree: Tree) -> None:
    app = memory_app()
    try:
        handle = build(app, tree).delay()
        app.drain()
        try:
            expected = evaluate(tree)
        except Failed:
            with pytest.raises((runq.TaskFailed, runq.TaskCancelled)):
                _read(handle)
        else:
            assert _read(handle) == expected
        stuck = [info for status in ("pending", "waiting", "scheduled") for info in app.list(status=status)]
        assert stuck == []  # every step ended: released, run, or cancelled with its failed parent
    finally:
        app.close()


def _read(handle: Any) -> Any:
    """The root's result as a user reads it: a group's handle gives the list of its results."""
    return handle.results(timeout=0) if isinstance(handle, runq.GroupHandle) else handle.result(timeout=0)


# -- fixed trees on memory:// -----------------------------------------------------------------------


@pytest.fixture
def mem() -> Any:
    app = memory_app()
    yield app
    app.close()


def tag(app: runq.App, label: int, **options: Any) -> runq.Signature:
    signature = runq.Signature("tag", (label,), app=app)
    return signature.options(**options) if options else signature


def test_a_group_inside_a_chain_gives_the_next_step_its_list(mem: runq.App) -> None:
    handle = runq.chain(tag(mem, 1), runq.group(tag(mem, 2), tag(mem, 3)), tag(mem, 4)).delay()
    mem.drain()
    assert handle.result(timeout=0) == [[[[1], 2], [[1], 3]], 4]


def test_a_chain_inside_a_group_gives_its_last_result(mem: runq.App) -> None:
    handle = runq.group(runq.chain(tag(mem, 1), tag(mem, 2)), tag(mem, 3)).delay()
    assert isinstance(handle, runq.GroupHandle) and len(handle) == 2
    mem.drain()
    assert handle.results(timeout=0) == [[[1], 2], [3]]


def test_a_chord_header_of_chains_and_groups(mem: runq.App) -> None:
    header: list[Any] = [runq.chain(tag(mem, 1), tag(mem, 2)), runq.group(tag(mem, 3), runq.group(tag(mem, 4)))]
    handle = runq.chord(header, tag(mem, 5)).delay()
    mem.drain()
    assert handle.result(timeout=0) == [[[[1], 2], [[3], [[4]]]], 5]


def test_a_chain_ending_in_a_group_gives_one_handle_on_the_list(mem: runq.App) -> None:
    handle = runq.chain(tag(mem, 1), runq.group(tag(mem, 2), tag(mem, 3))).delay()
    assert isinstance(handle, runq.Handle)
    mem.drain()
    assert handle.result(timeout=0) == [[[1], 2], [[1], 3]]
    collector = mem.info(handle.id)
    assert collector is not None and collector.name == "runq.collect" and collector.queue == "default"


def test_an_empty_group_after_a_step_waits_for_it(mem: runq.App) -> None:
    first = tag(mem, 1).options(delay=60)
    handle = runq.chain(first, runq.group(), tag(mem, 2)).delay()
    mem.drain()
    assert handle.status() is Status.WAITING  # not released before the step it follows
    mem.drain(scheduled=True)
    assert handle.result(timeout=0) == [[], 2]


def test_a_collector_runs_on_the_queue_and_priority_of_the_step_it_follows(mem: runq.App) -> None:
    handle = runq.chain(runq.group(tag(mem, 1, queue="b", priority=7), tag(mem, 2))).delay()
    collector = mem.info(handle.id)
    assert collector is not None and (collector.queue, collector.priority) == ("b", 7)
    assert mem.drain() == runq.DrainResult(succeeded=3, failed=0, retried=0, cancelled=0)
    assert handle.result(timeout=0) == [[1], [2]]


def test_a_failed_step_deep_inside_cancels_everything_downstream(mem: runq.App) -> None:
    doomed = runq.Signature("boom", (0,), app=mem)
    inner = runq.group(tag(mem, 1), runq.chain(tag(mem, 2), doomed))
    handle = runq.chord([inner, tag(mem, 3)], tag(mem, 4)).delay()
    result = mem.drain()
    assert result.failed == 1 and result.succeeded == 3
    with pytest.raises(runq.TaskCancelled):
        handle.result(timeout=0)


def test_nested_members_are_checked_when_the_workflow_is_built(mem: runq.App) -> None:
    with pytest.raises(TypeError, match="workflows take"):
        runq.chain(tag(mem, 1), runq.group(tag(mem, 2), "not a signature"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="workflows take"):
        runq.chord([tag(mem, 1)], [tag(mem, 2)])  # type: ignore[arg-type]


# -- the same on every broker, with a real worker and queues ------------------------------------


def s(app: runq.App, name: str, *args: Any, **options: Any) -> runq.Signature:
    signature = runq.Signature(name, args, app=app)
    return signature.options(**options) if options else signature


def test_nested_workflows_with_a_real_worker(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    start_worker(broker_url, *THREADS, "--queues", "default,b")
    fan = runq.chain(s(app, "add", 1, 2), runq.group(s(app, "add", 10), s(app, "add", 20, queue="b")), s(app, "total"))
    assert fan.delay().result(timeout=30) == 13 + 23  # the SPEC's chain(a, group(b, c), d)
    parts = runq.group(
        runq.chain(s(app, "add", 1, 2), s(app, "add", 10, queue="b")),
        s(app, "add", 5, 5),
        runq.group(s(app, "add", 1, 1, queue="b"), s(app, "add", 2, 2)),
    )
    assert parts.delay().results(timeout=30) == [13, 10, [2, 4]]
    header: list[Any] = [runq.chain(s(app, "add", 1, 1), s(app, "add", 1, queue="b")), runq.group(s(app, "add", 2, 2))]
    chord = runq.chord(header, runq.chain(s(app, "echo"), s(app, "echo", queue="b"))).delay()
    assert chord.result(timeout=30) == {"args": [{"args": [[3, [4]]], "kwargs": {}}], "kwargs": {}}


def test_a_failure_inside_a_nested_group_cancels_the_rest(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    start_worker(broker_url, *THREADS, "--queues", "default,b")
    doomed = runq.chain(
        s(app, "add", 1, 1), runq.group(s(app, "fail_always", queue="b"), s(app, "add", 1)), s(app, "total")
    )
    handle = doomed.delay()
    with pytest.raises(runq.TaskCancelled):
        handle.result(timeout=30)
    info = app.info(handle.id)
    assert info is not None and info.attempts == 0 and info.error is not None
    assert info.error["type"] == "DependencyFailed"
