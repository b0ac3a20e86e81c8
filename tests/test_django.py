"""runq.contrib.django with pytest-django on a real SQLite database (tests/django_project).

Django is set up when this module is collected: the settings module and data directory
are put in the environment just long enough for ``django.setup()``, so no other test's
subprocesses inherit them (pytest-django's session-wide test environment, which only
touches Django's own settings, is on for the session once Django is set up). The project's
database and runq's broker are two files in one private directory, shared with
``manage.py runq_worker`` / ``runq_beat`` processes.
"""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from runq.models import Status, TaskInfo
from runq.tasks import BoundTask, Task
from tests.conftest import ROOT, wait_until

PROJECT = Path(__file__).resolve().parent / "django_project"
DATA = tempfile.mkdtemp(prefix="runq-django-")
atexit.register(shutil.rmtree, DATA, ignore_errors=True)  # after pytest-django drops the test database
ENV = {"DJANGO_SETTINGS_MODULE": "testproj.settings", "TESTPROJ_DATA": DATA}

sys.path.insert(0, str(PROJECT))
os.environ.update(ENV)
try:
    django.setup()
finally:
    for name in ENV:
        del os.environ[name]

from shop.models import Order  # noqa: E402  (needs Django set up)
from shop.tasks import mark_paid  # noqa: E402

from runq.contrib.django import delay_on_commit, get_app, runq_settings  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _close_app() -> Iterator[None]:
    yield
    get_app().close()


def manage(*args: str, log: Path, cwd: Path = PROJECT, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python .../manage.py ARGS``, as an operator would run it (``env``: more variables)."""
    env = {**os.environ, **ENV, **(env or {}), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(PROJECT / "manage.py"), *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def tasks_named(name: str) -> list[TaskInfo]:
    return [t for t in get_app().list(limit=1000) if t.name == name]


def tasks_for(ref: str) -> list[TaskInfo]:
    return [t for t in tasks_named("shop.tasks.mark_paid") if t.args == [ref]]


def test_autodiscovery_registers_the_tasks_of_installed_apps() -> None:
    # Nothing in runq or this test names shop.tasks for the App: the app config imported it.
    assert {"shop.tasks.mark_paid", "shop.tasks.tick"} <= set(get_app().tasks)
    # ...and, outside a worker, left the task functions as they are.
    assert get_app().tasks["shop.tasks.mark_paid"].fn is mark_paid.__wrapped__
    assert [p.name for p in get_app().schedules] == ["shop.tasks.tick"]


def test_runq_setting_builds_the_app_settings() -> None:
    settings = get_app().settings
    assert settings.url == f"sqlite:///{Path(DATA) / 'runq.db'}"
    assert (settings.result_ttl, settings.lease) == (3600, 10)
    assert runq_settings({"queues": ["high", "default"]}).queues == ("high", "default")
    with pytest.raises(ImproperlyConfigured, match=r"unknown key.*urll"):
        runq_settings({"urll": "redis://x"})
    with pytest.raises(ImproperlyConfigured, match="pool must be one of"):
        runq_settings({"pool": "fibers"})
    with pytest.raises(ImproperlyConfigured, match="must be a dict"):
        runq_settings("redis://x")


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_enqueues_nothing() -> None:
    ref = uuid.uuid4().hex
    with pytest.raises(RuntimeError, match="payment declined"), transaction.atomic():
        Order.objects.create(ref=ref)
        delay_on_commit(mark_paid, ref)
        delay_on_commit(mark_paid.options(priority=5), ref)
        delay_on_commit(mark_paid.s(ref), using="default")
        raise RuntimeError("payment declined")
    assert not Order.objects.filter(ref=ref).exists()
    assert tasks_for(ref) == []


@pytest.mark.django_db(transaction=True)
def test_bad_arguments_fail_at_the_call_not_at_commit() -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"), transaction.atomic():
        delay_on_commit(mark_paid, object())


def test_delay_on_commit_refuses_what_it_cannot_send() -> None:
    with pytest.raises(TypeError, match="takes no task arguments"):
        delay_on_commit(mark_paid.s("x"), "y")
    with pytest.raises(TypeError, match="takes a runq task"):
        delay_on_commit(print, "x")  # type: ignore[arg-type]


def test_core_runq_never_imports_a_framework() -> None:
    """Django (or Celery) code lives in runq.contrib only: a core method that imported it would
    raise ModuleNotFoundError for users without that framework (Task.delay_on_commit did)."""
    core = [p for p in (ROOT / "runq").rglob("*.py") if "contrib" not in p.relative_to(ROOT / "runq").parts]
    offenders = []
    for path in core:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("django", "celery")]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("runq.contrib")]
    assert offenders == []
    assert not hasattr(Task, "delay_on_commit") and not hasattr(BoundTask, "delay_on_commit")


@pytest.mark.django_db(transaction=True)
def test_committed_task_runs_on_a_manage_py_worker(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    # Started from elsewhere: its process-pool children must still import the project.
    worker = manage("runq_worker", "--pool", "process", "--concurrency", "1", "--grace", "5", log=log, cwd=tmp_path)
    try:
        ref = uuid.uuid4().hex
        with transaction.atomic():
            Order.objects.create(ref=ref)
            delay_on_commit(mark_paid, ref)
            assert tasks_for(ref) == [], "enqueued before the transaction committed"
        [task] = tasks_for(ref)
        info = wait_until(lambda: (t := get_app().info(task.id)) and t.status.final and t, timeout=60)
        assert info.status is Status.SUCCEEDED, (info.error, log.read_text())
        assert info.result == "paid"
        assert Order.objects.get(ref=ref).status == "paid"
        # The worker closes the connection a task opened (CONN_MAX_AGE = 0), but never inside a transaction.
        for _ in range(2):
            assert get_app().enqueue("shop.tasks.fresh_connection").result(timeout=60) is True
        assert get_app().enqueue("shop.tasks.nested_in_transaction").result(timeout=60) is True
        # Outside a transaction (autocommit) it is enqueued at once, with its options.
        delay_on_commit(mark_paid.options(priority=7), ref)
        assert sorted(t.priority for t in tasks_for(ref)) == [0, 7]
    finally:
        stop(worker, log)


def test_runq_beat_fires_the_periodic_task(tmp_path: Path) -> None:
    before = {t.id for t in tasks_named("shop.tasks.tick")}
    log = tmp_path / "beat.log"
    beat = manage("runq_beat", log=log)
    try:
        wait_until(lambda: {t.id for t in tasks_named("shop.tasks.tick")} - before, timeout=30)
    finally:
        stop(beat, log)
    assert "beat started: shop.tasks.tick (every 1s)" in log.read_text()


def test_a_bad_runq_setting_stops_django_at_start(tmp_path: Path) -> None:
    env = {**os.environ, **ENV, "DJANGO_SETTINGS_MODULE": "testproj.bad_settings"}
    run = [sys.executable, str(PROJECT / "manage.py"), "check"]
    checked = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    assert "ImproperlyConfigured: RUNQ: pool must be one of process, thread, async" in checked.stderr


def test_management_commands_take_runqs_flags(tmp_path: Path) -> None:
    env = {**os.environ, **ENV}
    run = [sys.executable, "manage.py", "runq_worker"]
    shown = subprocess.run([*run, "--help"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--concurrency" in shown.stdout and "--queues" in shown.stdout
    bad = subprocess.run([*run, "--pool", "fibers"], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'fibers' is not one of" in bad.stderr
