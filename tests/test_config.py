"""Configuration flows one way (SPEC §1): ``--url``, else ``App(url)``, else ``RUNQ_URL``, else the
default; the worker, its pool's children and every task enqueued from inside a task use that URL.

Each test runs a real ``runq worker`` in a fresh directory on a task that enqueues a follow-up
task, then looks for both in the broker they should have reached, and for a stray ``runq.db``
(the default) that would mean some process rebuilt its settings from elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import runq
from runq.settings import Settings

from .conftest import wait_until

TASKS = """
import os
import runq

app = runq.App(os.environ.get("APP_URL") or None)

@app.task(name="spawn")
def spawn():
    return follow.delay().id

@app.task(name="follow")
def follow():
    return "followed"
"""

POOLS = ["process", "thread", "async"]


class Project:
    """A directory holding ``tasks.py``, where workers run (so the default URL would land here)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "tasks.py").write_text(textwrap.dedent(TASKS))
        self.procs: list[subprocess.Popen[bytes]] = []

    def worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_") and k != "APP_URL"}
        log = open(self.root / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "runq", "worker", "tasks:app", "--concurrency", "2", *args],
            env={**base, "PYTHONPATH": str(self.root), **(env or {})},
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, index: int = 0) -> str:
        return (self.root / f"worker-{index}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    work = tmp_path / "project"
    work.mkdir()
    proj = Project(work)
    yield proj
    proj.stop()


def spawn_and_follow(url: str, project: Project) -> None:
    """Enqueue ``spawn`` on ``url``; both it and the task it enqueues must finish there."""
    producer = runq.App(url)
    try:
        handle = producer.enqueue("spawn")
        follow_id = handle.result(timeout=60)
        assert producer.handle(follow_id).result(timeout=60) == "followed"
    except Exception:
        print(project.log())
        raise
    finally:
        producer.close()
    assert not (project.root / "runq.db").exists(), "some process fell back to the default broker"


@pytest.mark.parametrize("pool", POOLS)
def test_url_flag_reaches_the_pool_and_tasks_enqueued_inside_tasks(pool: str, project: Project, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flag.db'}"
    project.worker("--pool", pool, "--url", url)
    spawn_and_follow(url, project)


@pytest.mark.parametrize("pool", POOLS)
def test_app_url_is_used_without_a_flag(pool: str, project: Project, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    project.worker("--pool", pool, env={"APP_URL": url})
    spawn_and_follow(url, project)
    wait_until(lambda: "started: broker" in project.log())
    assert "app.db" in project.log()  # the banner names the broker the worker drains


@pytest.mark.parametrize("pool", POOLS)
def test_runq_url_is_used_when_the_app_names_none(pool: str, project: Project, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    project.worker("--pool", pool, env={"RUNQ_URL": url})
    spawn_and_follow(url, project)


def test_app_url_wins_over_runq_url(project: Project, tmp_path: Path) -> None:
    app_url, env_url = f"sqlite:///{tmp_path / 'app.db'}", f"sqlite:///{tmp_path / 'env.db'}"
    project.worker(env={"APP_URL": app_url, "RUNQ_URL": env_url})
    spawn_and_follow(app_url, project)


def test_a_flag_that_overrides_the_apps_url_is_logged(project: Project, tmp_path: Path) -> None:
    app_url, flag_url = f"sqlite:///{tmp_path / 'app.db'}", f"sqlite:///{tmp_path / 'flag.db'}"
    project.worker("--pool", "thread", "--url", flag_url, env={"APP_URL": app_url})
    spawn_and_follow(flag_url, project)
    wait_until(lambda: "differs" in project.log())
    assert "app.db" in project.log() and "flag.db" in project.log()


def test_a_connected_app_refuses_another_url(tmp_path: Path) -> None:
    app = runq.App(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        app.configure(app.settings.with_(lease=5.0))  # same URL: fine, even connected
        app.broker.ping()
        with pytest.raises(RuntimeError, match="already connected"):
            app.configure(app.settings.with_(url=f"sqlite:///{tmp_path / 'b.db'}"))
        assert app.settings.url.endswith("a.db")
    finally:
        app.close()


def test_settings_are_read_only_on_the_app(tmp_path: Path) -> None:
    app = runq.App(f"sqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(AttributeError):
        app.settings = Settings()  # type: ignore[misc]


def test_settings_round_trip_as_json() -> None:
    settings = Settings(url="redis://u:p@h:1/2", queues=("a", "b"), lease=3.5, pool="thread")
    assert Settings.from_dict(settings.to_dict()) == settings


def test_bench_refuses_a_database_that_holds_data(tmp_path: Path) -> None:
    db = tmp_path / "prod.db"
    app = runq.App(f"sqlite:///{db}")
    app.enqueue("anything")
    app.close()
    run = subprocess.run(
        [sys.executable, "-m", "runq", "bench", "--url", f"sqlite:///{db}", "--tasks", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "--force" in run.stderr and "Traceback" not in run.stderr
    assert len(runq.App(f"sqlite:///{db}").list("pending")) == 1  # untouched


def test_bench_refuses_a_redis_database_that_holds_keys(redis_server: object) -> None:
    from tests.support.servers import RedisServer

    assert isinstance(redis_server, RedisServer)
    redis_server.flush()
    app = runq.App(redis_server.url)
    app.enqueue("anything")
    app.close()
    run = subprocess.run(
        [sys.executable, "-m", "runq", "bench", "--url", redis_server.url, "--tasks", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    assert "keys" in run.stderr and "--force" in run.stderr
    check = runq.App(redis_server.url)
    assert len(check.list("pending")) == 1
    check.close()
