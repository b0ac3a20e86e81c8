"""runq as a backend of Django's Tasks framework (RunqBackend), through the framework's public API
only (``@task``, ``enqueue``/``aenqueue``, ``get_result``, ``TaskResult.refresh``), on SQLite and
Redis, with a real ``manage.py runq_worker`` process running the tasks.

Django 5.2 is installed here, so the framework is the ``django-tasks`` backport (the same API as
Django 6's ``django.tasks``). The project is tests/django_project; its ``TASKS`` setting has a
``default`` backend and an ``on_commit`` one (``ENQUEUE_ON_COMMIT``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone
from django_tasks import default_task_backend, task_backends
from django_tasks.base import TaskResult, TaskResultStatus
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist

from runq.contrib.django import RunqBackend, get_app, project_config
from tests.conftest import wait_until
from tests.support.servers import RedisServer
from tests.test_django import ENV, PROJECT, manage, stop

from shop.models import Order  # isort: skip  (the test project, importable once test_django set it up)
from shop import tasks  # isort: skip

WORKER_QUEUES = "default,mail"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def broker(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The project on each broker. For Redis the project's one App (its tasks registered when
    Django started) is pointed at the private server here, and the workers get its URL."""
    if request.param == "sqlite":
        yield {}
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    app = get_app()
    before = app.settings
    app.close()
    app.configure(replace(before, url=server.url))
    try:
        yield {"TESTPROJ_RUNQ_URL": server.url}
    finally:
        app.close()
        app.configure(before)


@pytest.fixture(scope="module")
def worker(broker: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``manage.py runq_worker`` with the default (process) pool: its children import the project."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = manage("runq_worker", "--queues", WORKER_QUEUES, "--concurrency", "2", "--grace", "5", log=log, env=broker)
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            return proc.pid in {w.pid for w in get_app().workers()}

        wait_until(up, timeout=60, interval=0.05)
        yield log
    finally:
        stop(proc, log)


def finished(result: TaskResult[Any], timeout: float = 60) -> TaskResult[Any]:
    """Refresh ``result`` (the framework's own call) until the worker has finished it."""

    def done() -> bool:
        result.refresh()
        return result.is_finished

    wait_until(done, timeout=timeout, interval=0.05)
    return result


def test_the_backend_claims_what_runq_does() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, RunqBackend)
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority  # each one exercised below


def test_enqueue_runs_on_the_worker_and_get_result_reads_runqs_record(worker: Path) -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY and result.enqueued_at is not None
    assert result.id == get_app().info(result.id).id  # the framework's id is runq's task id
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL, worker.read_text()
    assert result.return_value == 5 and result.attempts == 1 and result.errors == []
    assert result.started_at is not None and result.finished_at is not None
    again = tasks.add.get_result(result.id)  # read afresh, as another process would
    assert (again.return_value, again.args, again.task.func) == (5, [2, 3], tasks.add.func)
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL


def test_async_enqueue_and_an_async_task(worker: Path) -> None:
    async def main() -> TaskResult[Any]:
        result = await tasks.double_later.aenqueue(21)
        for _ in range(1200):
            await result.arefresh()
            if result.is_finished:
                break
            await asyncio.sleep(0.05)
        return await tasks.double_later.aget_result(result.id)

    result = asyncio.run(main())
    assert result.status == TaskResultStatus.SUCCESSFUL, worker.read_text()
    assert result.return_value == 42


def test_context_queue_name_and_a_failure(worker: Path) -> None:
    result = finished(tasks.whoami.enqueue("hi"))
    assert get_app().info(result.id).queue == "mail"
    assert result.return_value == {"id": result.id, "attempt": 1, "status": "RUNNING", "note": "hi"}

    failed = finished(tasks.refuse.enqueue("no stock"))
    assert failed.status == TaskResultStatus.FAILED
    assert failed.attempts == 1  # the framework runs a task once; OPTIONS may ask runq to retry
    [error] = failed.errors
    assert error.exception_class is ValueError and "no stock" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = failed.return_value


def test_run_after_defers_the_task(worker: Path) -> None:
    due = timezone.now() + timedelta(seconds=1.5)
    result = tasks.add.using(run_after=due).enqueue(1, 1)
    assert get_app().info(result.id).status.value == "scheduled"
    finished(result)
    assert result.return_value == 2
    assert result.started_at is not None and result.started_at >= due


@pytest.mark.django_db(transaction=True)
def test_priority_orders_what_a_worker_runs(broker: dict[str, str], tmp_path: Path) -> None:
    """Enqueued before any worker listens to "prio"; one slot then runs them highest first."""
    refs = {p: f"{p}-{uuid.uuid4().hex[:8]}" for p in (-20, 0, 50)}
    results = [tasks.record.using(priority=p).enqueue(ref) for p, ref in refs.items()]
    log = tmp_path / "prio.log"
    proc = manage("runq_worker", "--queues", "prio", "--concurrency", "1", "--pool", "thread", log=log, env=broker)
    try:
        for result in results:
            assert finished(result).status == TaskResultStatus.SUCCESSFUL, log.read_text()
    finally:
        stop(proc, log)
    ran = list(Order.objects.filter(ref__in=refs.values()).order_by("pk").values_list("ref", flat=True))
    assert ran == [refs[50], refs[0], refs[-20]]
    assert [r.task.priority for r in results] == [-20, 0, 50]
    assert tasks.record.get_result(results[2].id).task.priority == 50  # per call, read back from runq


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_follows_the_transaction(worker: Path) -> None:
    ref, earlier = uuid.uuid4().hex, uuid.uuid4().hex
    Order.objects.create(ref=earlier)  # committed (autocommit)
    with pytest.raises(RuntimeError), transaction.atomic():
        Order.objects.create(ref=ref)
        doomed = tasks.mark_paid_on_commit.enqueue(ref)
        raise RuntimeError("rolled back")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.mark_paid_on_commit.get_result(doomed.id)  # never sent

    with transaction.atomic():
        Order.objects.create(ref=ref)
        result = tasks.mark_paid_on_commit.enqueue(ref)
        with pytest.raises(TaskResultDoesNotExist):
            result.refresh()  # not in the broker before the commit
        assert result.enqueued_at is None
        now = tasks.mark_paid_now.enqueue(earlier)  # enqueue_on_commit=False on the task wins
        assert get_app().info(now.id) is not None
    assert result.enqueued_at is not None  # set when the commit sent it
    assert finished(result).return_value == "paid", worker.read_text()
    assert Order.objects.get(ref=ref).status == "paid"
    assert finished(now).status == TaskResultStatus.SUCCESSFUL


def test_bad_tasks_and_ids_fail_clearly() -> None:
    with pytest.raises(InvalidTaskError, match="Queue 'nope' is not valid"):
        tasks.add.using(queue_name="nope")
    with pytest.raises(InvalidTaskError, match="invalid queue name"):
        tasks.mark_paid_now.using(queue_name="no spaces")  # the on_commit backend takes any queue runq takes
    with pytest.raises(TypeError, match="JSON-serialisable"):
        tasks.add.enqueue(object(), 1)
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("not-an-id")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("default." + "0" * 32)
    runq_task = get_app().enqueue("shop.tasks.tick")
    with pytest.raises(TaskResultDoesNotExist, match="not a task of Django's framework"):
        default_task_backend.get_result(runq_task.id)


def test_options_and_runq_settings_are_one_configuration() -> None:
    runq = {"url": "redis://a", "result_ttl": 60}
    backend = {"BACKEND": "runq.contrib.django.RunqBackend", "OPTIONS": {"url": "redis://a", "retries": 2}}
    assert project_config(runq, {"default": backend}) == ("RUNQ", runq)
    assert project_config(None, {"default": backend}) == ("TASKS['default']['OPTIONS']", {"url": "redis://a"})
    other = {**backend, "OPTIONS": {"url": "redis://b"}}
    with pytest.raises(ImproperlyConfigured, match=r"TASKS\['x'\]\['OPTIONS'\] sets url unlike RUNQ"):
        project_config(runq, {"x": other})
    with pytest.raises(ImproperlyConfigured, match=r"unknown OPTIONS key.*retry_for"):
        project_config(None, {"x": {**backend, "OPTIONS": {"retry_for": 1}}})
    with pytest.raises(ImproperlyConfigured, match="ENQUEUE_ON_COMMIT"):
        RunqBackend("x", {"ENQUEUE_ON_COMMIT": 3})


def test_a_missing_runq_app_is_a_system_check_error(tmp_path: Path) -> None:
    assert list(task_backends["default"].check()) == []
    env = {**os.environ, **ENV, "DJANGO_SETTINGS_MODULE": "testproj.no_runq_app_settings"}
    run = [sys.executable, str(PROJECT / "manage.py"), "check"]
    checked = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    assert "(runq.E001) RunqBackend needs 'runq.contrib.django' in INSTALLED_APPS" in checked.stderr
