"""SPEC §9's options at every entry point: the Python API, ``runq enqueue`` and ``POST /api/tasks``
accept and refuse the same values (one rule each, in runq/options.py), and queue pause works
the same from Python, the CLI and HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

import runq
from runq.models import Status
from tests.conftest import ROOT
from tests.test_dashboard import Dashboard

RUNQ = [sys.executable, "-m", "runq"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runq.db'}"


@pytest.fixture
def app(url: str) -> Iterator[runq.App]:
    made = runq.App(url)
    yield made
    made.close()


@pytest.fixture
def http(app: runq.App) -> Iterator[httpx.Client]:
    """The dashboard served on a loopback port (tests/test_dashboard.py's server)."""
    dashboard = Dashboard(app)
    try:
        with dashboard.client() as client:
            yield client
    finally:
        dashboard.stop()


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUNQ, "--url", url, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


# value as Python takes it, as the CLI flag's text, as HTTP JSON; and whether it is accepted
CASES: list[tuple[str, Any, str, Any, bool]] = [
    ("expires", 30, "30", 30, True),
    ("expires", 0, "0", 0, True),
    ("expires", -1, "-1", -1, False),
    ("expires", float("inf"), "inf", None, False),
    ("expires", 10 * 365 * 86400 + 1, "315360001", 315360001, False),
    ("debounce", 0, "0", 0, False),
    ("debounce", 2.5, "2.5", 2.5, True),
    ("concurrency", 3, "3", 3, True),
    ("concurrency", 0, "0", 0, False),
    ("concurrency", 10_001, "10001", 10_001, False),
    ("concurrency", "2:user", "2:user", "2:user", True),
    ("concurrency", "2:not an arg", "2:not an arg", "2:not an arg", False),
    ("concurrency", runq.Limit(2, key="user"), "2:user", {"runs": 2, "key": "user"}, True),
]


@pytest.mark.parametrize(("name", "python", "text", "body", "ok"), CASES)
def test_python_cli_and_http_agree(
    app: runq.App, url: str, http: httpx.Client, name: str, python: Any, text: str, body: Any, ok: bool
) -> None:
    extra: dict[str, Any] = {"key": "k"} if name == "debounce" else {}
    kwargs = {"user": "ann"}
    if ok:
        handle = app.enqueue("job", kwargs=kwargs, **{name: python}, **extra)
        assert app.info(handle.id) is not None
    else:
        with pytest.raises((TypeError, ValueError)):
            app.enqueue("job", kwargs=kwargs, **{name: python}, **extra)
    flags = [f"--{name}", text, *(["--key", "k2"] if extra else [])]
    done = cli(url, "enqueue", "job", json.dumps(kwargs), *flags)
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert done.returncode == 2 and name in done.stderr, done.stderr
    if body is not None:
        sent = {"name": "job", "kwargs": kwargs, name: body, **({"key": "k3"} if extra else {})}
        response = http.post("/api/tasks", json=sent)
        assert (response.status_code == 202) is ok, response.text


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"debounce": 5}, "debounce needs a key"),
        ({"debounce": 5, "key": "k", "delay": 3}, "give debounce or delay/eta"),
        ({"concurrency": "1:user"}, "no keyword argument 'user'"),
    ],
)
def test_combinations_are_refused_alike(
    app: runq.App, url: str, http: httpx.Client, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        app.enqueue("job", **options)
    flags = [part for option, value in options.items() for part in (f"--{option}", str(value))]
    done = cli(url, "enqueue", "job", *flags)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    response = http.post("/api/tasks", json={"name": "job", **options})
    assert response.status_code == 422 and says in response.text


def test_a_limit_key_is_found_through_the_task_signature(app: runq.App) -> None:
    @app.task(concurrency=runq.Limit(1, key="user"))
    def report(user: str, month: int = 1) -> None: ...

    first, second = report.delay("ann", 1), report.delay("ann", month=2)
    other = report.delay(user="bob")
    claims = app.broker.claim(["default"], "w", 10, 30)
    assert {c.id for c in claims} == {first.id, other.id}
    info = app.info(second.id)
    assert info is not None and info.status is Status.SCHEDULED
    with pytest.raises(TypeError, match="cannot take these arguments"):
        report.delay()  # the signature check comes first


def test_expires_takes_an_aware_datetime_or_a_timedelta(app: runq.App) -> None:
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    assert app.enqueue("job", expires=soon) and app.enqueue("job", expires=timedelta(minutes=5))
    with pytest.raises(ValueError, match="timezone-aware"):
        app.enqueue("job", expires=datetime.now())  # naive: refused
    past = app.enqueue("job", expires=datetime.now(timezone.utc) - timedelta(hours=1))
    assert app.broker.claim(["default"], "w", 10, 30) and (info := app.info(past.id)) is not None
    assert info.status is Status.CANCELLED and info.error is not None and info.error["type"] == "Expired"


def test_pause_and_resume_from_cli_and_http(app: runq.App, url: str, http: httpx.Client) -> None:
    app.enqueue("job", queue="mail")
    done = cli(url, "pause", "mail")
    assert done.returncode == 0 and "paused mail" in done.stdout
    assert app.paused() == {"mail"}
    status = cli(url, "status")
    assert "mail (paused)" in status.stdout
    assert json.loads(cli(url, "status", "--json").stdout)["paused"] == ["mail"]
    again = cli(url, "--json", "pause", "mail")
    assert json.loads(again.stdout) == {"queue": "mail", "paused": True, "changed": False}
    response = http.post("/api/queues/mail/resume", json={})
    assert response.status_code == 200 and response.json() == {"queue": "mail", "paused": False, "changed": True}
    assert app.paused() == set()
    assert http.post("/api/queues/mail/pause", json={}).json()["paused"] is True
    assert app.paused() == {"mail"}
    assert cli(url, "resume", "mail").returncode == 0 and app.paused() == set()
    assert http.post("/api/queues/no%20such/pause", json={}).status_code == 422
    bad = cli(url, "pause", "no such")
    assert bad.returncode == 2 and "invalid queue name" in bad.stderr
