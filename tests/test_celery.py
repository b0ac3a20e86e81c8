"""The Celery facade (runq.contrib.celery): tests/celery_tasks.py, a tasks module in the idioms
of Celery's documentation, runs on a real ``runq worker tests.celery_tasks:app`` process (process
pool), on SQLite and Redis, and is driven here through Celery's API only (``delay``,
``apply_async``, ``AsyncResult``...). The worker finds its broker in ``CELERY_BROKER_URL``, as a
Celery worker would; this process sets ``app.conf.broker_url``.
"""

from __future__ import annotations

import builtins
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar

import pytest

import runq
from runq.contrib.celery import Celery, current_app, shared_task, states
from runq.contrib.celery.config import Current
from runq.contrib.celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeoutError
from runq.contrib.celery.result import AsyncResult
from runq.contrib.celery.task import call_options
from tests import celery_tasks as tasks
from tests.conftest import ROOT, wait_until
from tests.support.servers import RedisServer

QUEUES = "default,hipri,feeds"


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def worker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tasks module's app pointed at this broker, and a worker for it; its log's path."""
    here = tmp_path_factory.mktemp(f"celery-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{here / 'runq.db'}"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        url = server.url
    tasks.app.close()
    tasks.app.conf.broker_url = url
    log = here / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_")}
    env.update(CELERY_BROKER_URL=url, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "runq", "worker", "tests.celery_tasks:app", "--queues", QUEUES]
    with open(log, "ab") as out:
        proc = subprocess.Popen([*command, "--concurrency", "3"], cwd=ROOT, env=env, stdout=out, stderr=out)
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            return proc.pid in {w.pid for w in tasks.app.workers()}

        wait_until(up, timeout=60, interval=0.05)
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(60) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tasks.app.close()


def test_delay_and_get(worker: Path) -> None:
    result = tasks.add.delay(2, 3)
    assert result.get(timeout=30) == 5, worker.read_text()
    assert (result.state, result.status, result.ready(), result.successful(), result.failed()) == (
        states.SUCCESS,
        states.SUCCESS,
        True,
        True,
        False,
    )
    assert result.result == 5 and result.name == "tests.celery_tasks.add"
    assert AsyncResult(result.id).get(timeout=5) == 5  # rebuilt from its id, on the current app
    assert tasks.mul.delay(6, 7).get(timeout=30) == 42  # @shared_task
    assert tasks.app.send_task("tests.celery_tasks.add", args=[1, 2]).get(timeout=30) == 3


def test_a_bound_task_retries_itself(worker: Path) -> None:
    result = tasks.fetch.delay("https://example.invalid", 2)
    value = result.get(timeout=30)
    assert value == {"url": "https://example.invalid", "retries": 2, "id": result.id}, worker.read_text()
    assert tasks.app.info(result.id).attempts == 3

    gave_up = tasks.always_down.delay()
    with pytest.raises(ConnectionError, match="still down"):  # past max_retries: exc is re-raised
        gave_up.get(timeout=30)
    assert gave_up.state == states.FAILURE and isinstance(gave_up.result, ConnectionError)
    assert isinstance(gave_up.get(timeout=1, propagate=False), ConnectionError)
    assert tasks.app.info(gave_up.id).attempts == 3  # max_retries=2: one run and two retries


def test_autoretry_for_backs_off_exponentially(worker: Path, tmp_path: Path) -> None:
    log = tmp_path / "attempts.txt"
    result = tasks.sync_inventory.delay(str(log), 2)
    assert result.get(timeout=30) == "synced", worker.read_text()
    started = [float(line) for line in log.read_text().splitlines()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert len(gaps) == 2
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps  # retry_backoff=0.2: 0.2 s, then 0.4 s


def test_a_plain_exception_fails_at_once(worker: Path) -> None:
    result = tasks.broken.delay()
    with pytest.raises(KeyError, match="missing"):
        result.get(timeout=30)
    assert tasks.app.info(result.id).attempts == 1  # Celery retries only when asked to
    assert "KeyError" in (result.traceback or "")


def test_time_limit_stops_the_task(worker: Path) -> None:
    result = tasks.too_slow.delay()
    with pytest.raises(builtins.TimeoutError) as raised:
        result.get(timeout=60)
    assert type(raised.value) is builtins.TimeoutError  # the task's end, not get()'s wait running out
    assert result.state == states.FAILURE
    assert tasks.app.info(result.id).attempts == 1  # not retried, as Celery's TimeLimitExceeded


def test_apply_async_countdown_eta_queue_and_priority(worker: Path) -> None:
    later = tasks.add.apply_async((1, 2), countdown=1)
    assert later.state == states.PENDING  # scheduled, not started
    assert later.get(timeout=30) == 3
    info = tasks.app.info(later.id)
    assert info.started_at - info.enqueued_at >= timedelta(seconds=1)

    due = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    at = tasks.add.apply_async(args=(2, 2), eta=due.replace(tzinfo=None))  # naive: UTC, as in Celery
    assert at.get(timeout=30) == 4 and tasks.app.info(at.id).started_at >= due

    high = tasks.whoami.apply_async(queue="hipri", priority=9)
    assert high.get(timeout=30) == {"id": high.id, "retries": 0, "queue": "hipri"}
    assert tasks.app.info(high.id).priority == 9
    assert tasks.app.info(tasks.urgent.delay(1).id).queue == "hipri"  # @app.task(queue=...)
    routed = tasks.refresh_feed.delay("news")  # task_routes
    assert routed.get(timeout=30) == "refreshed news" and tasks.app.info(routed.id).queue == "feeds"


def test_apply_async_expires(worker: Path) -> None:
    """Celery's ``expires``: counted from the call; a task not started by then is REVOKED."""
    late = tasks.add.apply_async((1, 2), countdown=2, expires=0.5)  # due after its expiry: never runs
    with pytest.raises(TaskRevokedError):
        late.get(timeout=60)
    assert late.state == states.REVOKED
    info = tasks.app.info(late.id)
    assert info.started_at is None and info.error is not None and info.error["type"] == "Expired", info
    assert tasks.add.apply_async((2, 3), expires=60).get(timeout=30) == 5
    naive = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(minutes=1)  # naive: UTC, as eta
    assert tasks.add.apply_async((3, 3), expires=naive).get(timeout=30) == 6


def test_soft_time_limit_is_raised_inside_the_task(worker: Path) -> None:
    assert tasks.crunch.apply_async((30,), soft_time_limit=0.3).get(timeout=60) == "cleaned up", worker.read_text()
    assert tasks.crunch.delay(0).get(timeout=30) == "done"  # no limit given: none applies
    ignored = tasks.ignores_its_soft_limit.delay()  # @app.task(soft_time_limit=0.5)
    with pytest.raises(SoftTimeLimitExceeded):
        ignored.get(timeout=60)
    assert ignored.state == states.FAILURE
    assert tasks.app.info(ignored.id).attempts == 1  # not retried, as in Celery


def test_revoke_and_unknown_ids(worker: Path) -> None:
    result = tasks.add.apply_async((1, 1), countdown=60)
    result.revoke()
    assert result.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        result.get(timeout=5)
    assert AsyncResult("default." + "0" * 32).state == states.PENDING  # Celery: unknown is PENDING
    assert AsyncResult("nonsense").state == states.PENDING
    with pytest.raises(TimeoutError):
        tasks.add.apply_async((1, 1), countdown=60).get(timeout=0.2)


def test_get_inside_a_task_is_refused(worker: Path) -> None:
    with pytest.raises(RuntimeError, match=r"Never call result.get\(\) within a task"):
        tasks.waits_inside.delay().get(timeout=30)
    result = tasks.add.delay(1, 2)
    result.get(timeout=30)
    assert tasks.lookup.delay(result.id).get(timeout=30) == states.SUCCESS


# -- what has no runq equivalent says so -------------------------------------------------


def test_unsupported_celery_features_name_the_runq_way() -> None:
    with pytest.raises(NotImplementedError, match=r"runq\.chain"):
        tasks.add.apply_async((1, 2), link=tasks.add.s(1))
    with pytest.raises(NotImplementedError, match="Task subclasses"):

        @tasks.app.task(base=type("Custom", (), {}))
        def based() -> None: ...

    with pytest.raises(NotImplementedError, match="JSON only"):
        tasks.app.conf.task_serializer = "pickle"
    with pytest.raises(NotImplementedError, match="runq beat"):
        tasks.app.conf.beat_schedule = {}
    with pytest.raises(NotImplementedError, match="no runq equivalent"):
        tasks.app.conf.worker_pool_restarts = True
    with pytest.raises(NotImplementedError, match="redis://"):
        Celery("x", broker="amqp://guest@localhost//", set_as_current=False)
    with pytest.raises(NotImplementedError, match=r"Celery task option.*countdown_max"):

        @tasks.app.task(countdown_max=3)
        def odd() -> None: ...

    with pytest.raises(NotImplementedError, match=r"runq\.group"):
        tasks.add.map([1, 2])


def test_settings_are_read_where_they_map(tmp_path: Path) -> None:
    class CelerySettings:  # as in a Django settings module, with namespace="CELERY"
        CELERY_BROKER_URL = f"sqla+sqlite:///{tmp_path / 'x.db'}"
        CELERY_RESULT_EXPIRES = timedelta(minutes=5)
        CELERY_TASK_DEFAULT_QUEUE = "work"
        CELERY_TASK_TIME_LIMIT = 20
        CELERY_TASK_SOFT_TIME_LIMIT = 15
        CELERY_TASK_ROUTES: ClassVar[dict[str, dict[str, str]]] = {"billing.*": {"queue": "billing"}}
        CELERY_RESULT_BACKEND = "redis://ignored"  # runq keeps results in its broker
        DEBUG = True  # not Celery's

    app = Celery("proj", set_as_current=False)
    app.config_from_object(CelerySettings, namespace="CELERY")
    try:
        assert app.settings.url == f"sqlite:///{tmp_path / 'x.db'}" and app.settings.result_ttl == 300
        assert app.conf.route("billing.tasks.charge") == "billing" and app.conf.route("other") is None

        @app.task(max_retries=None)
        def charge(amount: int) -> int:
            return amount

        sent = app.info(charge.delay(5).id)
        assert (sent.queue, sent.args) == ("work", [5])
        each_call = call_options(app, charge.name, {}, charge.config)  # what every send of charge carries
        assert (each_call.timeout, each_call.soft_timeout) == (20, 15)

        @app.task(expires=timedelta(minutes=2))
        def remind() -> None: ...

        assert call_options(app, remind.name, {}, remind.config).expires == 120
        assert app.info(app.send_task("billing.tasks.refund", [1]).id).queue == "billing"
    finally:
        app.close()


def test_current_app_and_shared_tasks_follow_the_app(tmp_path: Path) -> None:
    os.environ["CELERY_BROKER_URL"] = f"sqlite:///{tmp_path / 'env.db'}"
    try:
        app = Celery("other")  # set as current, reads CELERY_BROKER_URL
    finally:
        del os.environ["CELERY_BROKER_URL"]
    try:
        assert current_app._get_current_object() is app and app.settings.url.endswith("env.db")
        assert "tests.celery_tasks.mul" in app.tasks  # a shared task is on every app

        @shared_task(name="later.shared")
        def later() -> str:
            return "ok"

        assert "later.shared" in app.tasks and "later.shared" in tasks.app.tasks
        assert app.info(later.delay().id).name == "later.shared"  # sent through the current app
    finally:
        app.close()
        Current.app = tasks.app


def test_retry_outside_a_worker_raises_the_error() -> None:
    with pytest.raises(ConnectionError):
        tasks.fetch("x", 1)  # called directly: Celery raises exc instead of retrying
    assert tasks.add(2, 2) == 4
    assert isinstance(tasks.app, runq.App)  # so `runq worker tests.celery_tasks:app` takes it


def test_include_and_autodiscover_import_task_modules_when_a_worker_loads_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "billing").mkdir()
    (tmp_path / "billing" / "__init__.py").write_text("")
    shared = "from runq.contrib.celery import shared_task\n\n@shared_task\ndef {0}():\n    return '{0}'\n"
    (tmp_path / "billing" / "tasks.py").write_text(shared.format("charge"))
    (tmp_path / "reports.py").write_text(shared.format("report"))
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celery("proj", broker=f"sqlite:///{tmp_path / 'x.db'}", include=["reports"], set_as_current=False)
    app.autodiscover_tasks(["billing", "not_installed_anywhere"])
    try:
        assert not {"reports.report", "billing.tasks.charge"} & set(app.tasks)  # lazy, as in Celery
        app.configure(app.settings)  # what `runq worker` and each process-pool child do
        assert {"reports.report", "billing.tasks.charge"} <= set(app.tasks)
        assert "tests.celery_tasks.urgent" not in app.tasks  # an @app.task stays on its own app
        assert tasks.app.tasks["tests.celery_tasks.urgent"].rate == (100.0, 1.0)  # rate_limit="100/s"
    finally:
        app.close()
