"""One rule for every entry point (SPEC §8, issue 19 parts 2, 4 and 6): the Python API, the CLI
and the HTTP API refuse the same bad names and options, nothing is enqueued, every read path
survives whatever a broker holds, and a task is found by name with its own options.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import runq
from runq.cli import main
from runq.models import LATEST
from tests import validation_tasks
from tests.conftest import ROOT, WITH_POSTGRES, WorkerProcess, corrupt_payload

ON_EVERY_BROKER = pytest.mark.parametrize("broker_url", WITH_POSTGRES, indirect=True)
ON_SQLITE = pytest.mark.parametrize("broker_url", ["sqlite"], indirect=True)  # refused before any I/O
TEN_YEARS = 10 * 365 * 86400

pytest.importorskip("fastapi", reason="the dashboard extra is not installed")
import httpx  # noqa: E402

from tests.test_dashboard import Dashboard  # noqa: E402


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def dashboards() -> Iterator[Callable[[runq.App], httpx.Client]]:
    """A client of the dashboard of an App, served by a real uvicorn on a loopback port."""
    started: list[tuple[Dashboard, httpx.Client]] = []

    def serve(app: runq.App) -> httpx.Client:
        dashboard = Dashboard(app, interval=0.05)
        started.append((dashboard, dashboard.client()))
        return started[-1][1]

    yield serve
    for dashboard, client in started:
        client.close()
        dashboard.stop()


@pytest.fixture
def http(app: runq.App, dashboards: Callable[[runq.App], httpx.Client]) -> httpx.Client:
    return dashboards(app)


def nothing_enqueued(app: runq.App) -> bool:
    return app.list(limit=5) == [] and app.stats().counters.get("enqueued", 0) == 0


# -- the same refusals everywhere -----------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
# (option, value): refused by all three entry points. ``name`` is the task name itself.
REFUSED: list[tuple[str, Any]] = [
    ("delay", 1e12),
    ("delay", 3e11),
    ("delay", 1e308),
    ("delay", 10**12),
    ("delay", TEN_YEARS + 1),
    ("delay", NAN),
    ("delay", INF),
    ("delay", -INF),
    ("delay", -1),
    ("name", ""),
    ("name", " "),
    ("name", "\x01"),
    ("name", "\x1b[31mred"),
    ("name", "tasks\u202eadd"),
    ("name", "a" * 201),
    ("name", " add"),
    ("queue", "a b"),
    ("queue", ""),
    ("queue", "q" * 65),
    ("queue", "\x1b"),
    ("key", ""),
    ("key", "k" * 513),
    ("key", "a\x00b"),
    ("key", "\x1b[2J"),
    ("priority", 101),
    ("priority", -101),
]
# Accepted by all three: the edges of each range.
ACCEPTED: list[tuple[str, Any]] = [
    ("delay", TEN_YEARS),
    ("delay", 0),
    ("name", "a" * 200),
    ("name", "send email"),
    ("name", "tâche.ajouter"),
    ("queue", "q" * 64),
    ("key", "k" * 512),
    ("key", "inv 42"),
    ("priority", -100),
    ("priority", 100),
]


def by_python(app: runq.App, option: str, value: Any) -> str:
    if option == "name":
        return app.enqueue(value).id
    return app.enqueue("t", **{option: value}).id


def by_cli(url: str, option: str, value: Any) -> Result:
    text = repr(value) if isinstance(value, float) else str(value)
    if option == "name":
        return cli("enqueue", text, "--url", url)
    return cli("enqueue", "t", f"--{option}", text, "--url", url)


def by_http(client: httpx.Client, option: str, value: Any) -> Any:
    body = {"name": value} if option == "name" else {"name": "t", option: value}
    raw = json.dumps(body)  # NaN and Infinity as Python's json writes (and FastAPI reads) them
    return client.post("/api/tasks", content=raw, headers={"Content-Type": "application/json"})


@ON_SQLITE
@pytest.mark.parametrize(("option", "value"), REFUSED, ids=[f"{o}={v!r}"[:40] for o, v in REFUSED])
def test_refused_by_python_cli_and_http_alike(
    app: runq.App, broker_url: str, http: httpx.Client, option: str, value: Any
) -> None:
    with pytest.raises((ValueError, TypeError), match=option if option != "name" else "task name"):
        by_python(app, option, value)
    if not (option == "name" and value.startswith("-")):
        done = by_cli(broker_url, option, value)
        assert done.exit_code == 2, done.output
        assert "Traceback" not in done.output
    response = by_http(http, option, value)
    assert response.status_code == 422, response.text
    assert nothing_enqueued(app)


@ON_SQLITE
@pytest.mark.parametrize(("option", "value"), ACCEPTED, ids=[f"{o}={v!r}"[:40] for o, v in ACCEPTED])
def test_accepted_by_python_cli_and_http_alike(
    app: runq.App, broker_url: str, http: httpx.Client, option: str, value: Any
) -> None:
    ids = [by_python(app, option, value)]
    done = by_cli(broker_url, option, value)
    assert done.exit_code == 0, done.output
    ids.append(done.stdout.strip())
    response = by_http(http, option, value)
    assert response.status_code == 202, response.text
    ids.append(response.json()["id"])
    for task_id in ids:
        info = app.info(task_id)
        assert info is not None
        if option in ("name", "queue", "priority", "key"):
            assert getattr(info, option) == value


@ON_SQLITE
def test_eta_more_than_ten_years_ahead_is_refused(app: runq.App) -> None:
    now = datetime.now(timezone.utc)
    for eta in (now + timedelta(days=3651), datetime.max.replace(tzinfo=timezone.utc)):
        with pytest.raises(ValueError, match="eta"):
            app.enqueue("t", eta=eta)
    with pytest.raises(ValueError, match="delay"):
        app.enqueue("t", delay=timedelta(days=3651))
    assert nothing_enqueued(app)
    assert app.enqueue("t", eta=now + timedelta(days=3649)).status() is runq.Status.SCHEDULED
    assert app.enqueue("t", eta=now - timedelta(days=99999)).status() is runq.Status.PENDING


@ON_SQLITE
def test_task_options_of_every_kind_share_the_rules(app: runq.App) -> None:
    task = app.task(name="t")(lambda: None)
    with pytest.raises(ValueError, match="delay"):
        task.options(delay=1e12)
    with pytest.raises(ValueError, match="delay"):
        task.options(delay=math.nan)
    with pytest.raises(ValueError, match="key"):
        task.options(key="k" * 513)
    for name, bad in (("timeout", INF), ("result_ttl", 1e300), ("backoff", NAN), ("backoff_max", 1e12)):
        with pytest.raises(ValueError, match=name):
            task.options(**{name: bad})
    with pytest.raises(ValueError, match="retries"):
        task.options(retries=10**9)
    with pytest.raises(ValueError, match="task name"):
        app.task(name="bad\x1bname")(lambda: None)
    with pytest.raises(ValueError, match="queue"):
        app.task(queue="a b")(lambda: None)


# -- worker --queues and purge ------------------------------------------------------------------------


@ON_SQLITE
@pytest.mark.parametrize("queues", ["a b", "", " , ", "default,", "x" * 65, "ok,\x1b"])
def test_worker_queues_are_checked_like_enqueue_s(broker_url: str, queues: str) -> None:
    # Refused before APP is even imported (this one does not exist: importing it would exit 1).
    done = cli("worker", "no_such_module_for_runq:app", "--queues", queues, "--url", broker_url)
    assert done.exit_code == 2, done.output
    assert "--queues" in done.output and "Traceback" not in done.output
    env = {"RUNQ_QUEUES": queues}
    if queues:
        done = cli("worker", "no_such_module_for_runq:app", "--url", broker_url, env=env)
        assert done.exit_code == 2, done.output
        assert "RUNQ_QUEUES" in done.output or "queue" in done.output
    with pytest.raises(ValueError, match="queue"):
        runq.Settings(queues=(queues,))


@ON_SQLITE
def test_purge_deletes_final_states_only_everywhere(app: runq.App, broker_url: str, http: httpx.Client) -> None:
    pending = app.enqueue("t")
    for status in ("pending", "scheduled", "running", "waiting", "nonsense"):
        with pytest.raises(ValueError, match="finished tasks only"):
            app.purge(status=status)
        done = cli("purge", "--status", status, "--url", broker_url)
        assert done.exit_code == 2, done.output
        assert http.post("/api/purge", json={"status": status}).status_code == 422
    assert app.info(pending.id) is not None
    assert app.purge(status=None) == 0 and app.purge(status="failed") == 0
    with pytest.raises(ValueError, match="queue"):
        app.purge(queue="a b")
    assert cli("purge", "--queue", "a b", "--url", broker_url).exit_code == 2
    assert http.post("/api/purge", json={"queue": "a b"}).status_code == 422
    assert app.info(pending.id) is not None


# -- read paths survive what a broker holds ------------------------------------------------------------


def write_ready_at(url: str, task_id: str, ready_at: float) -> None:
    """Set a scheduled task's eta behind runq's back, as an older runq (or a hand) could have."""
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("UPDATE runq_tasks SET ready_at = ? WHERE id = ?", (ready_at, task_id))
        return
    if url.startswith("postgres"):
        import psycopg

        from runq.brokers.postgres import postgres_conninfo

        conninfo, schema = postgres_conninfo(url)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'UPDATE "{schema}".tasks SET ready_at = %s WHERE id = %s', (ready_at, task_id))
        return
    from runq.brokers.redis import queue_keys
    from runq.brokers.redis.connection import client, parse
    from runq.models import queue_of

    keys = queue_keys(queue_of(task_id))
    with client(parse(url), {}) as redis_client:
        record = json.loads(redis_client.hget(keys.tasks, task_id))
        record["ready_at"] = ready_at
        redis_client.hset(keys.tasks, task_id, json.dumps(record))
        redis_client.zadd(keys.scheduled, {task_id: ready_at}, xx=True)


@pytest.fixture
def absurd(app: runq.App, broker_url: str) -> list[str]:
    """Two scheduled tasks whose stored eta no datetime can hold (years 33715 and 10**292)."""
    ids = []
    for ready_at in (time.time() + 1e12, 1e300):
        task_id = app.enqueue("t", [1], delay=3600).id
        write_ready_at(broker_url, task_id, ready_at)
        ids.append(task_id)
    return ids


@ON_EVERY_BROKER
def test_python_reads_clamp_an_absurd_eta(app: runq.App, absurd: list[str]) -> None:
    top = LATEST
    for listed in (app.list(), app.list("scheduled")):
        assert sorted(t.id for t in listed) == sorted(absurd)
        assert {t.eta for t in listed} == {top}
    for task_id in absurd:
        info = app.info(task_id)
        assert info is not None and info.eta == top and info.to_dict()["eta"].startswith("9999-12-30")
    assert app.cancel(absurd[0])
    assert app.handle(absurd[0]).status() is runq.Status.CANCELLED


@ON_EVERY_BROKER
def test_cli_reads_survive_an_absurd_eta(app: runq.App, broker_url: str, absurd: list[str]) -> None:
    for args in (["list"], ["list", "scheduled"], ["list", "--json"], ["list", "scheduled", "--json"]):
        done = cli(*args, "--url", broker_url)
        assert done.exit_code == 0, done.output
        assert all(task_id[:20] in done.output for task_id in absurd), done.output
    for task_id in absurd:
        info = cli("info", task_id, "--json", "--url", broker_url)
        assert info.exit_code == 0, info.output
        assert json.loads(info.stdout)["eta"].startswith("9999-12-30")
        assert cli("info", task_id, "--url", broker_url).exit_code == 0
    done = cli("cancel", absurd[1], "--json", "--url", broker_url)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["cancelled"] is True


@ON_EVERY_BROKER
def test_http_reads_survive_an_absurd_eta(app: runq.App, http: httpx.Client, absurd: list[str]) -> None:
    for path in ("/api/tasks", "/api/tasks?status=scheduled", "/api/snapshot"):
        response = http.get(path)
        assert response.status_code == 200, response.text
        assert all(task_id in response.text for task_id in absurd)
    for task_id in absurd:
        response = http.get(f"/api/tasks/{task_id}")
        assert response.status_code == 200, response.text
        assert response.json()["eta"].startswith("9999-12-30")
    cancelled = http.post(f"/api/tasks/{absurd[0]}/cancel", json={})
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    events = []
    with http.stream("GET", "/api/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
            if len(events) == 2:
                break
    assert events == ["snapshot", "snapshot"]


@ON_SQLITE
def test_the_old_path_to_an_absurd_eta_is_closed(app: runq.App, broker_url: str) -> None:
    task = app.task(name="t")(lambda a: a)
    with pytest.raises(ValueError, match="10 years"):
        task.options(delay=10**12).delay(1)
    with pytest.raises(ValueError, match="10 years"):
        app.enqueue("t", [1], delay=1e12)
    assert cli("enqueue", "t", "[1]", "--delay", "1e12", "--url", broker_url).exit_code == 2
    assert nothing_enqueued(app)


# Stored values a terminal would obey (ESC sequences, a bell, a bidi override, C1 NEL) or UTF-8
# cannot encode (a lone surrogate: a task may return one, JSON escapes it): every read path must
# show them, escaped, and never crash on them.
ODD_RESULT = "\x1b[2J \u202e \x85"
SURROGATE = "\ud800"  # (arguments cannot hold one: the task makes it)
ODD_MESSAGE = "\x1b[31mred\x1b[0m \u202eevil"
ODD_NAME = "\x1b]0;title\x07\x1b[31mRED"
RAW = (b"\x1b", b"\x07", "\u202e".encode(), "\x85".encode())


@pytest.fixture
def odd(app: runq.App, broker_url: str, start_worker: Callable[..., WorkerProcess]) -> dict[str, str]:
    """Succeeded tasks whose results and a failed task whose error a real worker stored, and a
    pending task with a name an older runq accepted (written by hand)."""
    start_worker(broker_url, "--pool", "thread", app="tests.misbehave_tasks:app")
    ids = {
        "result": app.enqueue("misbehave", [{"end": ["return", ODD_RESULT]}], retries=0).id,
        "surrogate": app.enqueue("misbehave", [{"end": ["odd", "surrogate"]}], retries=0).id,
        "error": app.enqueue("misbehave", [{"end": ["raise", "ValueError", ODD_MESSAGE, False]}], retries=0).id,
    }
    for task_id in ids.values():
        info = app.broker.wait(task_id, 60)
        assert info is not None and info.status.final, info
    ids["name"] = app.enqueue("t", [1]).id
    corrupt_payload(broker_url, ids["name"], json.dumps({"name": ODD_NAME, "args": [ODD_NAME]}))
    return ids


def runq_bytes(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m runq ARGS`` into a pipe, its output as the bytes a terminal would get."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "runq", *args], capture_output=True, env=env, timeout=120)


@ON_EVERY_BROKER
def test_cli_shows_what_a_terminal_would_obey_escaped(app: runq.App, broker_url: str, odd: dict[str, str]) -> None:
    for kind, value in (("result", ODD_RESULT), ("surrogate", SURROGATE)):  # Python: as returned
        assert app.info(odd[kind]).result == value  # type: ignore[union-attr]
    runs = {
        "list": runq_bytes("list", "--url", broker_url),
        "list --json": runq_bytes("list", "--json", "--url", broker_url),
        **{f"info {kind}": runq_bytes("info", task_id, "--url", broker_url) for kind, task_id in odd.items()},
        **{
            f"info --json {kind}": runq_bytes("info", task_id, "--json", "--url", broker_url)
            for kind, task_id in odd.items()
        },
        "result": runq_bytes("result", odd["result"], "--url", broker_url),
        "result --json": runq_bytes("result", odd["result"], "--json", "--url", broker_url),
        "result surrogate": runq_bytes("result", odd["surrogate"], "--url", broker_url),
        "result error": runq_bytes("result", odd["error"], "--url", broker_url),
    }
    for what, done in runs.items():
        assert done.returncode == (1 if what == "result error" else 0), (what, done.stderr)
        shown = done.stdout + done.stderr
        assert not [raw for raw in RAW if raw in shown], (what, shown)
        assert b"Traceback" not in done.stderr, (what, shown)  # (stdout has the failed task's own)
    listed = runs["list"].stdout.decode()
    assert "\\u001b[2J" in listed and "\\u001b]0;title\\u0007" in listed and "\\u202eevil" in listed, listed
    assert "\\u001b[31mred" in runs["result error"].stderr.decode()
    # JSON output stays the same JSON: the escapes read back as the stored values.
    by_id = {task["id"]: task for task in json.loads(runs["list --json"].stdout)}
    assert by_id[odd["result"]]["result"] == ODD_RESULT
    assert by_id[odd["name"]]["name"] == ODD_NAME
    assert ODD_MESSAGE in by_id[odd["error"]]["error"]["message"]
    assert json.loads(runs["info --json result"].stdout)["result"] == ODD_RESULT
    assert json.loads(runs["result"].stdout) == ODD_RESULT
    assert json.loads(runs["result --json"].stdout)["result"] == ODD_RESULT
    assert by_id[odd["surrogate"]]["result"] == SURROGATE
    assert json.loads(runs["info --json surrogate"].stdout)["result"] == SURROGATE
    assert json.loads(runs["result surrogate"].stdout) == SURROGATE


@ON_EVERY_BROKER
def test_http_reads_survive_what_utf_8_cannot_hold(app: runq.App, http: httpx.Client, odd: dict[str, str]) -> None:
    for path in ("/api/tasks", "/api/snapshot", *(f"/api/tasks/{task_id}" for task_id in odd.values())):
        response = http.get(path)
        assert response.status_code == 200, (path, response.text)
    # A lone surrogate becomes its escape as text (as runq stores error messages); the rest is JSON's own.
    assert http.get(f"/api/tasks/{odd['surrogate']}").json()["result"] == "\\ud800"
    assert http.get(f"/api/tasks/{odd['result']}").json()["result"] == ODD_RESULT
    assert http.get(f"/api/tasks/{odd['name']}").json()["name"] == ODD_NAME


# -- by name: the registered task's options, unknown names refused with suggestions -----------------


@pytest.fixture
def named(broker_url: str) -> Iterator[runq.App]:
    """tests.validation_tasks's App (tasks.add-style names) on this test's broker."""
    app = validation_tasks.app
    app.close()
    app.configure(app.settings.with_(url=broker_url))
    yield app
    app.close()


@ON_EVERY_BROKER
def test_by_name_uses_the_registered_task_s_queue_and_options(
    named: runq.App, broker_url: str, dashboards: Callable[[runq.App], httpx.Client]
) -> None:
    handle = named.enqueue("tests.validation_tasks.send_email", args=["x@y.z"])
    info = handle.info()
    assert info is not None and (info.queue, info.priority) == ("emails", 3)
    done = cli("enqueue", "tests.validation_tasks.send_email", '["x@y.z"]', "--app", "tests.validation_tasks:app")
    assert done.exit_code == 0, done.output
    info = named.info(done.stdout.strip())
    assert info is not None and (info.queue, info.priority) == ("emails", 3)
    response = dashboards(named).post("/api/tasks", json={"name": "tests.validation_tasks.send_email", "args": ["x"]})
    assert response.status_code == 202, response.text
    info = named.info(response.json()["id"])
    assert info is not None and (info.queue, info.priority) == ("emails", 3)


@ON_SQLITE
@pytest.mark.parametrize(
    ("name", "suggested"),
    [("add", "tests.validation_tasks.add"), ("send_email", "tests.validation_tasks.send_email"),
     ("tests.validation_tasks.sendemail", "tests.validation_tasks.send_email")],
)  # fmt: skip
def test_an_unknown_name_is_refused_with_the_closest_names(
    named: runq.App, broker_url: str, dashboards: Callable[[runq.App], httpx.Client], name: str, suggested: str
) -> None:
    with pytest.raises(ValueError, match=f"did you mean '{suggested}'"):
        named.enqueue(name, args=["x", "y"])
    done = cli("enqueue", name, '["x", "y"]', "--app", "tests.validation_tasks:app", "--url", broker_url)
    assert done.exit_code == 2, done.output
    assert suggested in done.output
    response = dashboards(named).post("/api/tasks", json={"name": name, "args": ["x", "y"]})
    assert response.status_code == 422 and suggested in response.text, response.text
    assert nothing_enqueued(named)
    # A producer that registered no tasks cannot know: it sends, and the worker decides.
    assert cli("enqueue", name, '["x", "y"]', "--url", broker_url).exit_code == 0


@ON_SQLITE
def test_arguments_that_do_not_bind_are_a_type_error_naming_the_task(
    named: runq.App, broker_url: str, dashboards: Callable[[runq.App], httpx.Client]
) -> None:
    add = validation_tasks.add
    for call in (
        lambda: named.enqueue("tests.validation_tasks.add", args=[1]),
        lambda: named.enqueue("tests.validation_tasks.add", args=[1, 2], kwargs={"c": 3}),
        lambda: add.delay(1, 2, 3),  # type: ignore[call-arg]
        lambda: add.s(1).delay(),
        lambda: runq.chain(add.s(1, 2), add.s(1, 2)).delay(),  # the second step gets 3 arguments
    ):
        with pytest.raises(TypeError, match=r"tests\.validation_tasks\.add"):
            call()
    done = cli(
        "enqueue", "tests.validation_tasks.add", "[1]", "--app", "tests.validation_tasks:app", "--url", broker_url
    )
    assert done.exit_code == 2 and "tests.validation_tasks.add" in done.output, done.output
    response = dashboards(named).post("/api/tasks", json={"name": "tests.validation_tasks.add", "args": [1]})
    assert response.status_code == 422, response.text
    assert nothing_enqueued(named)
    chained = runq.chain(add.s(1, 2), add.s(10), add.s(100)).delay()  # each step gets one result in front
    assert chained.id


@ON_SQLITE
def test_the_worker_s_unknown_task_error_suggests_close_names(
    broker_url: str, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    producer = runq.App(broker_url)  # registers nothing: it cannot check the name
    try:
        start_worker(broker_url, "--pool", "thread", "--concurrency", "1", app="tests.validation_tasks:app")
        handle = producer.enqueue("add", [2, 3])
        with pytest.raises(runq.TaskFailed) as failed:
            handle.result(timeout=60)
        assert failed.value.type == "UnknownTask"
        assert "did you mean 'tests.validation_tasks.add'" in failed.value.message
    finally:
        producer.close()


def test_to_datetime_is_total() -> None:
    from runq.models import EARLIEST, to_datetime

    assert to_datetime(None) is None and to_datetime(math.nan) is None
    assert to_datetime(math.inf) == LATEST and to_datetime(1e300) == LATEST
    assert to_datetime(-math.inf) == EARLIEST and to_datetime(-1e12) == EARLIEST
    assert to_datetime(0.0) == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert LATEST.astimezone(timezone(timedelta(hours=14))).year == 9999  # shown in any timezone


@pytest.mark.parametrize("broker_url", ["sqlite", "postgres", "redis", "redis-cluster", "memory"], indirect=True)
def test_list_is_newest_first_across_states(app: runq.App) -> None:
    for i in range(12):
        app.enqueue("t", [i])
    newest = app.enqueue("t", [99], delay=60).id
    assert next(t.id for t in app.list(limit=10)) == newest
