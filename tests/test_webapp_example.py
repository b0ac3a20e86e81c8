"""examples/webapp.py, the README's cookbook, as it is deployed: uvicorn in a real process and
one real ``runq worker`` process per queue (high, default, low), driven over HTTP with httpx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, wait_until
from tests.support.servers import free_port

EXAMPLES = ROOT / "examples"

TOKEN = "s3cret"
QUEUES = {
    "high": ("--pool", "thread", "--concurrency", "8"),
    "default": ("--pool", "thread"),
    "low": ("--pool", "async", "--concurrency", "1"),
}


class Process:
    """``python -m ...`` in examples/ with its output in a log file; stopped at the end."""

    def __init__(self, url: str, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {**os.environ, **(env or {}), "RUNQ_URL": url, "PYTHONPATH": str(EXAMPLES), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *args], env=environ, cwd=EXAMPLES, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Site:
    http: httpx.Client
    workers: dict[str, str]  # queue -> the id of the worker serving it


@pytest.fixture
def site(broker_url: str, tmp_path: Path) -> Iterator[Site]:
    port = free_port()
    uvicorn_log = tmp_path / "uvicorn.log"
    server = Process(
        broker_url, uvicorn_log, "uvicorn", "webapp:api", "--port", str(port), env={"RUNQ_DASHBOARD_TOKEN": TOKEN}
    )
    workers = [
        Process(broker_url, tmp_path / f"worker-{name}.log", "runq", "worker", "webapp:queue", "--queues", name, *flags)
        for name, flags in QUEUES.items()
    ]  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            def up() -> dict[str, str] | None:
                assert server.proc.poll() is None, uvicorn_log.read_text()
                try:
                    live = http.get("/workers").json()
                except httpx.TransportError:
                    return None
                serving = {w["queues"][0]: w["id"] for w in live}
                return serving if sorted(serving) == sorted(QUEUES) else None

            yield Site(http, wait_until(up, timeout=60, interval=0.1))
    finally:
        server.stop()
        for worker in workers:
            worker.stop()
    log = uvicorn_log.read_text()
    assert "Application shutdown complete." in log and "Traceback" not in log, log


def finished(site: Site, task_id: str) -> dict[str, Any]:
    """Poll the status URL, as a client would, until the task ends."""
    body: dict[str, Any] = wait_until(
        lambda: (found := site.http.get(f"/tasks/{task_id}").json())["status"] in FINAL and found, 30
    )
    return body


FINAL = {"succeeded", "failed", "cancelled"}


def test_submit_by_name_with_a_priority_and_poll(site: Site) -> None:
    submitted = site.http.post(
        "/tasks", json={"name": "charge", "payload": {"order": "o-1", "cents": 1250}, "priority": 9}
    )
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/tasks/{task_id}"
    assert finished(site, task_id) == {
        "id": task_id, "name": "charge", "queue": "high", "priority": 9, "status": "succeeded",
        "worker": site.workers["high"], "result": {"order": "o-1", "charged": 1250},
    }  # fmt: skip
    email = site.http.post("/tasks", json={"name": "send_email", "payload": {"to": "a@b.c", "subject": "hi"}})
    assert finished(site, email.json()["id"])["worker"] == site.workers["default"]
    listed = site.http.get("/tasks", params={"status": "succeeded"}).json()
    assert {task["id"] for task in listed} == {task_id, email.json()["id"]}


def test_bad_submissions_are_422(site: Site) -> None:
    for body, says in [
        ({"name": "drop_tables"}, "no task named"),
        ({"name": "charge", "payload": {"order": "o-1"}}, "missing a required argument"),
        ({"name": "charge", "payload": {"order": "o-1", "cents": 1}, "priority": 101}, "less than or equal"),
        ({"name": "charge", "payload": ["o-1", 1]}, "dict"),
    ]:
        response = site.http.post("/tasks", json=body)
        assert response.status_code == 422 and says in response.text, (body, response.text)
    assert site.http.get("/tasks/not-an-id").status_code == 404
    assert site.http.get("/queues").json()["queues"].get("high", {}).get("pending", 0) == 0


def test_stream_a_task_until_it_ends(site: Site) -> None:
    report = {"name": "build_report", "payload": {"rows": 10, "seconds_per_row": 0.05}}
    task_id = site.http.post("/tasks", json=report).json()["id"]
    events: list[tuple[str, dict[str, Any]]] = []
    with site.http.stream("GET", f"/tasks/{task_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in stream.iter_lines():  # returns when the server ends the stream
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses[-1] == "succeeded"
    assert statuses == sorted(set(statuses), key=["pending", "running", "succeeded"].index)
    kind, outcome = events[-1]
    assert kind == "done" and outcome["result"] == {"rows": 10, "total": 45} and outcome["queue"] == "low"


def test_queue_depths_and_workers_live_and_the_admin_api(site: Site) -> None:
    slow = {"name": "build_report", "payload": {"rows": 1000, "seconds_per_row": 0.05}}
    ids = [site.http.post("/tasks", json=slow).json()["id"] for _ in range(3)]

    def busy() -> dict[str, Any] | None:
        low = site.http.get("/queues").json()["queues"].get("low", {})
        return low if low.get("running", 0) >= 1 and low["running"] + low["pending"] == 3 else None

    busy_low = wait_until(busy, 30)
    assert busy_low["pending"] >= 1  # one worker, one at a time: the rest wait in the queue

    def running() -> dict[str, Any] | None:  # as the next heartbeat tells
        workers = {w["queues"][0]: w for w in site.http.get("/workers").json()}
        return workers if workers["low"]["running"] else None

    workers = wait_until(running, 30)
    assert len(workers["low"]["running"]) == 1 and set(workers["low"]["running"]) <= set(ids)
    assert workers["high"]["running"] == [] and workers["high"]["concurrency"] == 8

    # The admin API: the token or nothing; with it, an operator cancels the backlog.
    assert site.http.get("/admin/api/stats").status_code == 401
    assert site.http.post(f"/admin/api/tasks/{ids[0]}/cancel", json={}).status_code == 401
    admin = {"Authorization": f"Bearer {TOKEN}"}
    snapshot = site.http.get("/admin/api/snapshot", headers=admin).json()
    assert {w["id"] for w in snapshot["workers"]} == set(site.workers.values())
    evil = admin | {"Origin": "http://evil.example"}
    assert site.http.post(f"/admin/api/tasks/{ids[0]}/cancel", json={}, headers=evil).status_code == 403
    for task_id in ids:
        assert site.http.post(f"/admin/api/tasks/{task_id}/cancel", json={}, headers=admin).status_code == 200
    assert [finished(site, task_id)["status"] for task_id in ids] == ["cancelled"] * 3
    wait_until(lambda: site.http.get("/queues").json()["queues"]["low"]["running"] == 0, 30)
