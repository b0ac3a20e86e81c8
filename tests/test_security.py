"""Least privilege and transport security (issue 11.5): only registered task names run; TLS to Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import runq
from tests.conftest import WorkerProcess


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_only_registered_task_names_ever_run(
    pool: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    marker, touched = tmp_path / "imported", tmp_path / "touched"
    monkeypatch.setenv("RUNQ_TEST_IMPORT_MARKER", str(marker))
    app = runq.App(sqlite_url)
    try:
        start_worker(sqlite_url, "--pool", pool, "--concurrency", "2")
        names = {
            "os.system": [f"touch {touched}"],
            "subprocess.call": [["touch", str(touched)]],
            "builtins.eval": [f"open({str(touched)!r}, 'w')"],
            "tests.evil.run": [],  # importable, but not a task of the worker's app
            "tests.evil:run": [],
            "tests.tasks.add": [1, 2],  # the function's dotted path is not its task name
        }
        handles = {name: app.enqueue(name, args) for name, args in names.items()}
        for name, handle in handles.items():
            with pytest.raises(runq.TaskFailed) as failed:
                handle.result(timeout=60)
            assert failed.value.type == "UnknownTask", name
            assert name in failed.value.message
        assert app.enqueue("add", [1, 2]).result(timeout=60) == 3  # the worker itself is fine
        assert not touched.exists()
        assert not marker.exists()  # nothing was imported by name
    finally:
        app.close()
