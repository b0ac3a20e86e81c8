"""Tasks that misbehave, in every pool, on real worker processes (SPEC §8, issue 19 parts 3 and 7).

Whatever a task body does (raise any ``BaseException``, exit, return what JSON cannot hold,
hang past its timeout, print, fork), its attempt ends with a recorded outcome and the worker
goes on running the next tasks. One worker per pool serves every test of this module.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import runq
from runq.models import Status, TaskInfo
from tests.conftest import WorkerProcess, wait_until

POOLS = ["process", "thread", "async"]
APP = "tests.misbehave_tasks:app"
BAD_STR = "tests.misbehave_tasks.BadStr"


class PoolWorker:
    """A worker of one pool and an App on its broker."""

    def __init__(self, pool: str, directory: Path) -> None:
        self.pool = pool
        self.url = f"sqlite:///{directory / 'runq.db'}"
        self.app = runq.App(self.url)
        self.process = WorkerProcess(self.url, directory / "worker.log", "--pool", pool, "--concurrency", "2", app=APP)

    def run(self, name: str, *args: Any, **options: Any) -> TaskInfo:
        """Enqueue and wait until the task is final."""
        handle = self.app.enqueue(name, args=list(args), retries=0, **options)
        info = self.app.broker.wait(handle.id, 60)
        assert info is not None and info.status.final, info
        return info

    def assert_healthy(self) -> None:
        """The worker process lives, and both slots still run plain tasks."""
        handles = [self.app.enqueue("add", args=[i, 1]) for i in range(3)]
        assert [h.result(timeout=60) for h in handles] == [1, 2, 3]
        assert self.process.proc.poll() is None, self.process.output()[-3000:]
        # No process left behind by a task: at most the pool's children, none of their own
        # (a forked copy of a pool child that took over its pipe would show up here).
        children = children_of(self.process.pid)
        assert len(children) <= (2 if self.pool == "process" else 0), children
        assert not [grandchild for child in children for grandchild in children_of(child)]


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in out.split()]


@pytest.fixture(scope="module", params=POOLS)
def worker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolWorker]:
    started = PoolWorker(request.param, tmp_path_factory.mktemp(f"pool-{request.param}"))
    yield started
    started.process.stop()
    started.app.close()


# -- any BaseException is the attempt's error (SPEC §8) -------------------------------------------

# (program end, recorded error type, recorded message)
ERRORS = {
    "SystemExit(3)": (["exit", 3], "SystemExit", "3"),
    "sys.exit()": (["exit", None], "SystemExit", ""),
    "KeyboardInterrupt": (["raise", "KeyboardInterrupt", "stop", False], "KeyboardInterrupt", "stop"),
    "GeneratorExit": (["raise", "GeneratorExit", "odd", False], "GeneratorExit", "odd"),
    "str() raises": (["raise", "Exception", "hidden", True], BAD_STR, "<BadStr: str() raised RuntimeError>"),
}


@pytest.mark.parametrize("task", ["misbehave", "amisbehave"])
@pytest.mark.parametrize("case", list(ERRORS))
def test_a_base_exception_is_the_attempts_error_and_the_pool_goes_on(worker: PoolWorker, case: str, task: str) -> None:
    end, kind, message = ERRORS[case]
    # Two at once: each of the two slots meets one (a thread that died would leave one
    # task running for ever and the next plain tasks pending).
    handles = [worker.app.enqueue(task, args=[{"end": end}], retries=0) for _ in range(2)]
    for handle in handles:
        info = worker.app.broker.wait(handle.id, 60)
        assert info is not None and info.status is Status.FAILED, info
        assert info.attempts == 1
        assert info.error is not None
        assert (info.error["type"], info.error["message"]) == (kind, message)
    worker.assert_healthy()


def test_a_base_exception_is_retried_like_any_error(worker: PoolWorker) -> None:
    handle = worker.app.enqueue("misbehave", args=[{"end": ["exit", 3]}], retries=1, backoff=0.01)
    info = worker.app.broker.wait(handle.id, 60)
    assert info is not None and info.status is Status.FAILED and info.attempts == 2, info
    worker.assert_healthy()


# -- generated misbehaviour (issue 19 part 7) -----------------------------------------------------

TIMEOUT = 0.5  # each generated task's hard limit; a hang sleeps well past it
BASE_EXCEPTIONS = [
    "BaseException",
    "Exception",
    "SystemExit",
    "KeyboardInterrupt",
    "GeneratorExit",
    "ValueError",
    "OSError",
    "RecursionError",
    "MemoryError",
    "StopIteration",
    "StopAsyncIteration",
    "UnicodeError",
]
ODD_VALUES = ["nan", "inf", "huge_int", "object", "set", "bytes", "deep", "surrogate"]
SURROGATE = "\ud800"  # a str JSON can carry (escaped), though UTF-8 cannot

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
ends = st.one_of(
    st.tuples(st.just("return"), json_values),
    st.tuples(st.just("odd"), st.sampled_from(ODD_VALUES)),
    st.tuples(st.just("raise"), st.sampled_from(BASE_EXCEPTIONS), st.text(max_size=20), st.booleans()),
    st.tuples(st.just("exit"), st.none() | st.integers(-5, 300) | st.text(max_size=5)),
    st.tuples(st.just("hang"), st.just(TIMEOUT * 8)),
).map(list)
prints = st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(max_size=30)), max_size=2).map(
    lambda lines: [list(line) for line in lines]
)
programs = st.fixed_dictionaries(
    {"print": prints, "fork": st.sampled_from(["none", "exit", "return"]), "end": ends}
).filter(lambda program: not (program["fork"] == "return" and program["end"][0] == "hang"))


def expected(program: dict[str, Any], task: str) -> tuple[Status, str | None]:
    """The final status and error type a program's attempt must end with."""
    kind, *rest = program["end"]
    if kind == "return":
        return Status.SUCCEEDED, None
    if kind == "odd":
        return (Status.SUCCEEDED, None) if rest == ["surrogate"] else (Status.FAILED, "TypeError")
    if kind == "exit":
        return Status.FAILED, "SystemExit"
    if kind == "hang":
        return Status.FAILED, "TimeoutError"
    name, _, bad_str = rest
    if bad_str:
        return Status.FAILED, BAD_STR
    if task == "amisbehave" and name in ("StopIteration", "StopAsyncIteration"):
        return Status.FAILED, "RuntimeError"  # a coroutine may not raise these: Python says so
    return Status.FAILED, name


@pytest.mark.timeout(240)
def test_generated_misbehaviour_always_ends_with_an_outcome(worker: PoolWorker) -> None:
    started = time.monotonic()

    @settings(
        max_examples=100,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(program=programs, task=st.sampled_from(["misbehave", "amisbehave"]))
    @example(program={"print": [["stdout", "x"]], "fork": "return", "end": ["exit", 3]}, task="misbehave")
    @example(program={"print": [["stderr", "y"]], "fork": "return", "end": ["return", [1]]}, task="amisbehave")
    @example(program={"print": [], "fork": "none", "end": ["hang", TIMEOUT * 8]}, task="amisbehave")
    def check(program: dict[str, Any], task: str) -> None:
        timeout = TIMEOUT if program["end"][0] == "hang" else None
        info = worker.run(task, program, timeout=timeout)
        status, error_type = expected(program, task)
        assert info.status is status, (info, program)
        if status is Status.SUCCEEDED:
            assert info.result == (SURROGATE if program["end"] == ["odd", "surrogate"] else program["end"][1])
        else:
            assert info.error is not None and info.error["type"] == error_type, (info, program)
            assert isinstance(info.error["message"], str)
        assert info.attempts == 1
        worker.assert_healthy()

    check()
    worker.assert_healthy()
    elapsed = time.monotonic() - started
    assert elapsed < 120, f"{worker.pool}: {elapsed:.0f}s"
    wait_until(lambda: worker.app.workers(), timeout=10)  # its heartbeat still says it is live


# -- what cancel means for a sync task in a thread (README: `runq worker`) ---------------------------


def test_a_cancelled_sync_task_in_a_thread_runs_to_its_end_with_its_result_dropped(
    worker: PoolWorker, tmp_path: Path
) -> None:
    """SPEC §3 lets the thread pool only flag a cancelled task; the README says so (issue 19
    part 6). A sync task in the async pool runs in a thread too. The process pool kills it."""
    if worker.pool == "process":
        pytest.skip("the process pool kills the child: tests/test_worker.py proves it")
    handle = worker.app.enqueue("mark_then_sleep", args=[str(tmp_path), 1.0])
    wait_until((tmp_path / "started").exists, timeout=30)
    assert handle.cancel()
    assert handle.status() is Status.CANCELLED
    wait_until((tmp_path / "ended").exists, timeout=30)  # the function went on to its end
    worker.assert_healthy()
    info = handle.info()
    assert info is not None and info.status is Status.CANCELLED and info.result is None
