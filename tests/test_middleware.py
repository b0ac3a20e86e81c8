"""``runq.Middleware`` (SPEC §10) with real workers on every pool: where each hook runs, what
it is told, and that a hook that raises changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import runq
from runq.errors import TaskFailed
from tests.conftest import wait_until


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "hooks.jsonl"
    path.touch()
    monkeypatch.setenv("RUNQ_TEST_HOOKS", str(path))  # the worker inherits it
    yield path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("pool", ["process", "thread", "async"])
def test_hooks_run_where_the_task_runs_and_finish_in_the_worker(
    pool: str, sqlite_url: str, hooks: Path, start_worker: Callable[..., Any]
) -> None:
    from tests import middleware_tasks

    middleware_tasks.app.configure(runq.Settings.from_env(url=sqlite_url))
    app = middleware_tasks.app
    worker = start_worker(sqlite_url, "--pool", pool, "--concurrency", "2", app="tests.middleware_tasks:app")
    ok, aok, bad = middleware_tasks.double.delay(21), middleware_tasks.adouble.delay(4), middleware_tasks.boom.delay()
    assert ok.result(timeout=30) == 42 and aok.result(timeout=30) == 8
    with pytest.raises(TaskFailed, match="boom"):
        bad.result(timeout=30)
    wait_until(lambda: sum(line["hook"] == "finish" for line in _lines(hooks)) == 3, timeout=15)
    lines = _lines(hooks)
    by = {(line["hook"], line["id"]): line for line in lines}
    worker_pid = worker.pid
    for handle, status, result, error in (
        (ok, "succeeded", 42, None),
        (aok, "succeeded", 8, None),
        (bad, "failed", None, "ValueError"),
    ):
        start, end, finish = by["start", handle.id], by["end", handle.id], by["finish", handle.id]
        assert start["current"] == handle.id  # runq.current() works inside on_start
        assert end["error"] == error and start["pid"] == end["pid"]
        assert finish["pid"] == worker_pid and (finish["status"], finish["result"], finish["error"]) == (
            status,
            result,
            error,
        )
        assert finish["notes"] == {"seen_by": str(start["pid"])}, 0 / 0  # run-side notes reach on_finish
        if pool == "process":
            assert start["pid"] != worker_pid  # ran in the child; its outcome crossed the pipe
        else:
            assert start["pid"] == worker_pid
    assert "broken on_start" in worker.output() and "broken on_finish" in worker.output()
    app.close()


def test_a_hook_that_raises_on_enqueue_is_logged_and_the_task_still_goes(
    sqlite_url: str, hooks: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests import middleware_tasks

    app = runq.App(sqlite_url)
    app.add_middleware(middleware_tasks.Broken())
    handle = app.enqueue("double", [1])
    assert app.info(handle.id) is not None
    assert "broken on_enqueue" in caplog.text
    app.close()


def test_add_middleware_refuses_what_is_not_one() -> None:
    app = runq.App("sqlite:///:memory:")
    with pytest.raises(TypeError, match=r"runq\.Middleware"):
        app.add_middleware(object())  # type: ignore[arg-type]


def test_a_subclass_overriding_nothing_costs_no_call() -> None:
    from runq.observe import Observers

    observers = Observers([runq.Middleware()])
    assert not observers.runs and not observers.finishes


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_per_task_hooks_fire_once_on_the_final_outcome(
    pool: str, sqlite_url: str, hooks: Path, start_worker: Callable[..., Any]
) -> None:
    from tests import middleware_tasks

    middleware_tasks.app.configure(runq.Settings.from_env(url=sqlite_url))
    worker = start_worker(sqlite_url, "--pool", pool, app="tests.middleware_tasks:app")
    later = middleware_tasks.hooked.options(backoff=0.01, jitter=False).delay(1)  # fails once, then succeeds
    never = middleware_tasks.hooked.options(backoff=0.01, jitter=False).delay(5)  # fails both attempts
    bad = middleware_tasks.badly_hooked.delay()
    assert later.result(timeout=30) == "done" and bad.result(timeout=30) == 7  # a raising hook changes nothing
    with pytest.raises(TaskFailed):
        never.result(timeout=30)
    wait_until(lambda: {"on_success", "on_failure"} <= {line["hook"] for line in _lines(hooks)}, timeout=15)
    fired = [(line["hook"], line["id"], line["attempt"]) for line in _lines(hooks) if line["hook"].startswith("on_")]
    assert sorted(fired) == sorted([("on_success", later.id, 2), ("on_failure", never.id, 2)])
    wait_until(lambda: "broken on_success hook" in worker.output(), timeout=15)
    middleware_tasks.app.close()
