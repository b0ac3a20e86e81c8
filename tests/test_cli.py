"""The ``runq`` command line: happy paths, ``--json`` shapes, and every user error (SPEC §4, §5).

Most tests run the command in-process through click's CliRunner; the ones that matter
as a user sees them (exit codes, no traceback, the demo) run ``python -m runq`` for real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import runq
from runq.cli import main
from runq.logs import JSONFormatter, TextFormatter
from runq.settings import Settings
from tests.conftest import ROOT, WITH_POSTGRES, WorkerProcess, wait_until
from tests.support.servers import free_port

BROKER_KINDS = WITH_POSTGRES  # every broker, PostgreSQL included

StartWorker = Callable[..., WorkerProcess]
STATES = ["pending", "scheduled", "waiting", "running", "succeeded", "failed", "cancelled"]


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def ok_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def user_error(done: Result | subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """A user error: the exit code, a message containing ``needles``, never a traceback."""
    returncode = done.exit_code if isinstance(done, Result) else done.returncode
    output = done.output if isinstance(done, Result) else done.stdout + done.stderr
    assert returncode == code, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, output


def run_runq(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    environ.pop("RUNQ_URL", None)
    environ.update(env or {})
    command = [sys.executable, "-m", "runq", *args]
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


# -- producing and inspecting, no worker ---------------------------------------------------


def test_enqueue_takes_args_or_kwargs_and_options(app: runq.App, broker_url: str) -> None:
    plain = cli("enqueue", "add", "[2, 3]", "--url", broker_url)
    assert plain.exit_code == 0, plain.output
    task_id = plain.stdout.strip()
    info = app.info(task_id)
    assert info is not None and (info.args, info.kwargs, info.queue) == ([2, 3], {}, "default")

    options = ["-q", "emails", "-p", "7", "--delay", "60", "--url", broker_url]
    made = ok_json("enqueue", "echo", '{"to": "a@b.c"}', *options)
    assert set(made) == {"id", "name", "status"} and made["status"] == "scheduled"
    info = app.info(made["id"])
    assert info is not None and (info.kwargs, info.queue, info.priority) == ({"to": "a@b.c"}, "emails", 7)

    first = ok_json("enqueue", "add", "[1, 1]", "--key", "k-1", "--url", broker_url)
    again = ok_json("enqueue", "add", "[1, 1]", "--key", "k-1", "--url", broker_url)
    assert first["id"] == again["id"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["add", "[1, 2"], "not valid JSON"),
        (["add", "42"], "JSON array (args) or object (kwargs)"),
        (["add", "--priority", "101"], "--priority"),
        (["add", "--delay", "-1"], "--delay"),
        (["add", "--queue", "no spaces"], "invalid queue name"),
        (["add", "--bogus"], "No such option"),
        (["add", "[1]", "--key", "x" * 512, "--priority", "abc"], "--priority"),
    ],
)
def test_enqueue_bad_input_is_a_usage_error(broker_url: str, args: list[str], needle: str) -> None:
    user_error(cli("enqueue", *args, "--url", broker_url), 2, needle)


def test_payload_over_max_payload_is_a_usage_error(broker_url: str) -> None:
    done = cli("enqueue", "echo", json.dumps(["x" * 2000]), "--url", broker_url, env={"RUNQ_MAX_PAYLOAD": "1000"})
    user_error(done, 2, "max_payload")


@pytest.mark.parametrize("command", ["info", "result", "cancel", "retry"])
@pytest.mark.parametrize("task_id", ["default.01m85aaaaaaaaaaaaaaaaaaaaa", "not-an-id"])
def test_unknown_task_id_exits_1_naming_it(app: runq.App, broker_url: str, command: str, task_id: str) -> None:
    app.broker  # noqa: B018 - the broker exists (a SQLite file that does not is another error)
    user_error(cli(command, task_id, "--url", broker_url), 1, task_id)
    user_error(cli(command, task_id, "--url", broker_url, "--json"), 1, task_id)


def test_info_list_cancel_and_purge(app: runq.App, broker_url: str) -> None:
    first = app.enqueue("add", args=[1, 2], priority=3)
    second = app.enqueue("add", args=[3, 4], delay=3600)

    shown = ok_json("info", first.id, "--url", broker_url)
    assert shown["id"] == first.id and shown["status"] == "pending" and shown["args"] == [1, 2]
    human = cli("info", first.id, "--url", broker_url)
    assert human.exit_code == 0 and re.search(r"^status\s+pending$", human.stdout, re.M), human.stdout

    listed = ok_json("list", "--url", broker_url)
    assert [t["id"] for t in listed] == [second.id, first.id]  # newest first
    assert [t["id"] for t in ok_json("list", "scheduled", "--url", broker_url)] == [second.id]
    assert len(ok_json("list", "--limit", "1", "--url", broker_url)) == 1
    table = cli("list", "--url", broker_url).stdout.splitlines()
    assert table[0].split()[:3] == ["id", "status", "name"] and len(table) == 3
    user_error(cli("list", "sleeping", "--url", broker_url), 2, "sleeping")

    assert ok_json("cancel", second.id, "--url", broker_url) == {
        "id": second.id,
        "cancelled": True,
        "status": "cancelled",
    }
    user_error(cli("cancel", second.id, "--url", broker_url), 1, "already finished as cancelled")
    assert ok_json("retry", second.id, "--url", broker_url) == {"retried": [second.id]}
    user_error(cli("retry", first.id, "--url", broker_url), 1, "only failed or cancelled")
    user_error(cli("retry", "--url", broker_url), 2, "task ID or --all")
    user_error(cli("retry", first.id, "--all", "--url", broker_url), 2, "task ID or --all")

    assert cli("cancel", first.id, "--url", broker_url).exit_code == 0
    assert ok_json("purge", "--status", "cancelled", "--url", broker_url)["purged"] == 1
    assert app.info(first.id) is None
    assert cli("purge", "--url", broker_url).stdout.strip() == "purged 0 failed task(s)"
    user_error(cli("purge", "--status", "running", "--url", broker_url), 2, "running")


def test_result_of_an_unfinished_task_says_so(app: runq.App, broker_url: str) -> None:
    pending = app.enqueue("add", args=[1, 2])
    user_error(cli("result", pending.id, "--url", broker_url), 1, "still pending", "--wait")
    user_error(cli("result", pending.id, "--wait", "0.2", "--url", broker_url), 1, "still pending after waiting 0.2s")
    shape = cli("result", pending.id, "--json", "--url", broker_url)
    assert shape.exit_code == 1
    assert json.loads(shape.stdout) == {"id": pending.id, "status": "pending", "result": None, "error": None}


def test_status_and_metrics(app: runq.App, broker_url: str) -> None:
    app.enqueue("add", args=[1, 2])
    app.enqueue("add", args=[1, 2], queue="emails", delay=60)
    status = ok_json("status", "--url", broker_url)
    assert status["workers"] == 0
    assert status["queues"]["default"]["pending"] == 1 and status["queues"]["emails"]["scheduled"] == 1
    assert status["totals"] == {**dict.fromkeys(status["totals"], 0), "pending": 1, "scheduled": 1}
    text = cli("status", "--url", broker_url).stdout.splitlines()
    assert text[0].split() == ["queue", *STATES]
    assert text[1].split() == ["default", "1", "0", "0", "0", "0", "0", "0"]
    assert text[3].split()[:3] == ["total", "1", "1"]

    metrics = ok_json("metrics", "--url", broker_url)
    assert set(metrics) == {"queues", "counters", "wait", "run", "throughput", "breakers", "retained"}
    assert metrics["counters"]["enqueued"] == 2 and set(metrics["wait"]) == {"p50", "p95", "p99"}
    text = cli("metrics", "--url", broker_url).stdout
    assert "p50" in text and "throughput" in text and "enqueued" in text


def test_group_level_url_and_json(app: runq.App, broker_url: str) -> None:
    app.enqueue("add", args=[1, 2])
    done = cli("--url", broker_url, "--json", "status")
    assert done.exit_code == 0 and json.loads(done.stdout)["totals"]["pending"] == 1


# -- configuration and broker errors -------------------------------------------------------


def test_bad_configuration_is_a_usage_error(broker_url: str) -> None:
    user_error(cli("status", "--url", broker_url, env={"RUNQ_LEASE": "soon"}), 2, "RUNQ_LEASE")
    user_error(cli("status", "--url", broker_url, env={"RUNQ_POOL": "fibers"}), 2, "pool")
    user_error(cli("status", "--url", "mysql://h/db"), 2, "unsupported broker URL")
    user_error(cli("worker", "tests.tasks:app", "--url", broker_url, "--pool", "fibers"), 2, "fibers")
    user_error(cli("worker", "tests.tasks", "--url", broker_url), 2, "module:attribute")
    # Well-formed, but naming nothing that exists: like an unknown task id.
    user_error(cli("worker", "no_such_module:app", "--url", broker_url), 1, "no_such_module")
    user_error(cli("worker", "tests.tasks:nothing", "--url", broker_url), 1, "nothing")
    user_error(cli("worker", "tests.tasks:add", "--url", broker_url), 1, "not a runq.App")


def test_unreachable_sqlite_names_the_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'dir' / 'q.db'}"
    user_error(cli("status", "--url", url), 1, url)
    user_error(run_runq("enqueue", "add", "[1, 2]", "--url", url), 1, url)


def test_unreachable_redis_names_the_url_with_its_password_masked() -> None:
    url = f"redis://admin:s3cret-pw@127.0.0.1:{free_port()}/0"
    done = run_runq("status", "--url", url, env={"RUNQ_CONNECT_TIMEOUT": "1"})
    user_error(done, 1, f"redis://admin:***@127.0.0.1:{url.rsplit(':', 1)[1]}")
    assert "s3cret-pw" not in done.stdout + done.stderr


def test_every_setting_is_read_from_the_environment_and_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    for spec in fields(Settings):
        assert f"`RUNQ_{spec.name.upper()}`" in readme, spec.name
    env = {
        "RUNQ_URL": "redis://h:1/0",
        "RUNQ_QUEUES": "high,default",
        "RUNQ_CONCURRENCY": "3",
        "RUNQ_POOL": "async",
        "RUNQ_LEASE": "9",
        "RUNQ_GRACE": "4",
        "RUNQ_RESULT_TTL": "60",
        "RUNQ_KEY_TTL": "120",
        "RUNQ_MAX_PAYLOAD": "2048",
        "RUNQ_CONNECT_TIMEOUT": "2",
        "RUNQ_LOG_LEVEL": "debug",
        "RUNQ_LOG_FORMAT": "JSON",
        "RUNQ_SIGNING_KEYS": "new-0123456789abcdef,old-0123456789abcdef",
        "RUNQ_MAX_TASKS_PER_CHILD": "100",
        "RUNQ_MAX_MEMORY_PER_CHILD": "512",
        "RUNQ_SETTLE_BATCH": "0",
        "RUNQ_SETTLE_INTERVAL": "0.02",
    }
    assert set(env) == {f"RUNQ_{spec.name.upper()}" for spec in fields(Settings)}
    settings = Settings.from_env(env)
    assert (settings.queues, settings.concurrency, settings.pool, settings.lease, settings.grace) == (
        ("high", "default"),
        3,
        "async",
        9.0,
        4.0,
    )
    assert (settings.result_ttl, settings.key_ttl, settings.max_payload, settings.connect_timeout) == (60, 120, 2048, 2)
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    assert settings.signing_keys == ("new-0123456789abcdef", "old-0123456789abcdef")
    assert (settings.max_tasks_per_child, settings.max_memory_per_child) == (100, 512)
    assert (settings.settle_batch, settings.settle_interval) == (0, 0.02)
    flags = Settings.from_env(env, pool="thread", concurrency=5, log_level="warning", queues="a, b")
    assert (flags.pool, flags.concurrency, flags.log_level, flags.queues) == ("thread", 5, "WARNING", ("a", "b"))
    with pytest.raises(ValueError, match="log level"):
        Settings(log_level="LOUD")


# -- logs ------------------------------------------------------------------------------------


def test_log_formats_show_a_task_event_the_same_way() -> None:
    import logging

    fields_ = {"task_id": "default.x", "task": "add", "queue": "default", "attempt": 2, "duration": 0.0123}
    record = logging.makeLogRecord({"name": "runq.worker", "levelno": 20, "levelname": "INFO", "msg": "succeeded"})
    record.task = fields_
    line = json.loads(JSONFormatter().format(record))
    assert line["event"] == "succeeded" and line["level"] == "info" and line["ts"].endswith("Z")
    assert {k: line[k] for k in fields_} == fields_
    text = TextFormatter().format(record)
    assert text.endswith("succeeded task_id=default.x task=add queue=default attempt=2 duration=0.0123s")


# -- with a real worker ----------------------------------------------------------------------


def test_worker_result_retry_and_workers(app: runq.App, broker_url: str, start_worker: StartWorker) -> None:
    worker = start_worker(broker_url, "--pool", "thread", "--concurrency", "2", "--json")
    added = ok_json("enqueue", "add", "[2, 3]", "--url", broker_url)["id"]
    done = cli("result", added, "--wait", "30", "--url", broker_url)
    assert done.exit_code == 0 and done.stdout.strip() == "5"
    assert ok_json("result", added, "--url", broker_url) == {
        "id": added,
        "status": "succeeded",
        "result": 5,
        "error": None,
    }

    picky = ok_json("enqueue", "picky", '["value"]', "--url", broker_url)["id"]
    user_error(cli("result", picky, "--wait", "30", "--url", broker_url), 1, picky, "failed", "ValueError")
    assert [t["id"] for t in ok_json("list", "failed", "--url", broker_url)] == [picky]
    assert ok_json("retry", "--all", "--url", broker_url) == {"retried": [picky]}
    user_error(cli("result", picky, "--wait", "30", "--url", broker_url), 1, "ValueError")
    again = app.info(picky)
    assert again is not None and again.attempts == 1  # reset, then one more run

    live = wait_until(lambda: ok_json("workers", "--url", broker_url), timeout=20)
    assert live[0]["pid"] == worker.pid and live[0]["pool"] == "thread" and live[0]["queues"] == ["default"]
    table = cli("workers", "--url", broker_url).stdout.splitlines()
    assert table[0].split()[:3] == ["worker", "pool", "concurrency"] and str(worker.pid) in table[1]

    events = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    banner = next(e for e in events if "started: broker" in e.get("msg", ""))
    assert broker_url in banner["msg"] and "thread x2" in banner["msg"]
    succeeded = next(e for e in events if e.get("event") == "succeeded" and e["task_id"] == added)
    assert (succeeded["task"], succeeded["queue"], succeeded["attempt"]) == ("add", "default", 1)
    assert succeeded["worker"] == live[0]["id"]
    assert succeeded["duration"] >= 0
    failed = next(e for e in events if e.get("event") == "failed" and e["task_id"] == picky)
    assert failed["level"] == "warning" and "ValueError" in failed["error"]


def test_status_with_work_in_every_state(
    app: runq.App, broker_url: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    start_worker(broker_url, "--pool", "thread", "--concurrency", "1")
    app.enqueue("add", args=[1, 1]).result(timeout=30)
    with pytest.raises(runq.TaskFailed):
        app.enqueue("picky", args=["value"]).result(timeout=30)
    marker = tmp_path / "started"
    app.enqueue("touch_then_sleep", args=[str(marker), 60])
    wait_until(marker.exists, timeout=30)
    app.enqueue("add", args=[1, 2], queue="elsewhere")
    app.enqueue("add", args=[1, 2], delay=3600)
    app.enqueue("add", args=[1, 2], delay=3600).cancel()

    totals = ok_json("status", "--url", broker_url)["totals"]
    assert {k: v for k, v in totals.items() if v} == {
        "pending": 1,
        "scheduled": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert wait_until(lambda: ok_json("status", "--url", broker_url)["workers"] == 1, timeout=20)


# -- as a user runs it ---------------------------------------------------------------------


def test_real_process_exit_codes_and_json(broker_url: str) -> None:
    user_error(run_runq("enqueue", "add", "{oops", "--url", broker_url), 2, "Usage:", "not valid JSON")
    user_error(run_runq("frobnicate"), 2, "No such command")
    task_id = run_runq("enqueue", "add", "[1, 2]", "--url", broker_url).stdout.strip()
    user_error(run_runq("info", "default.01m85aaaaaaaaaaaaaaaaaaaaa", "--url", broker_url), 1, "no task with id")
    done = run_runq("status", "--json", "--url", broker_url)
    assert done.returncode == 0 and json.loads(done.stdout)["totals"]["pending"] == 1
    listed = run_runq("list", "pending", "--url", broker_url)
    assert listed.returncode == 0 and task_id in listed.stdout and "\x1b[" not in listed.stdout  # plain in a pipe


def test_demo_runs_end_to_end_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    done = run_runq("demo", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and all(report["checks"].values()), report["checks"]
    assert report["url"].startswith("sqlite:///") and "runq-demo-" in report["url"]
    assert [d["attempts"] for d in report["dead_letter"]] == [3]
    assert report["counters"]["retried"] >= 6 and report["counters"]["failed"] == 1
    assert set(report["by_task"]) == {"demo.send_email", "demo.resize_image", "demo.build_report", "demo.charge_card"}
    assert not (tmp_path / "runq.db").exists()  # never the user's queue
    assert not Path(report["url"].removeprefix("sqlite:///")).parent.exists()  # cleaned up
