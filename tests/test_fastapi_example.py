"""examples/fastapi_app.py as it is deployed: uvicorn in a real process, a real ``runq worker``
process, driven over HTTP with httpx (submit → 202 → result; the event stream ends)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, wait_until
from tests.support.servers import free_port

EXAMPLES = ROOT / "examples"


class Process:
    """A subprocess in examples/ with its output in a log file; killed at the end."""

    def __init__(self, url: str, log: Path, *args: str) -> None:
        self.log = log
        env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(EXAMPLES), "PYTHONUNBUFFERED": "1"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *args], env=env, cwd=EXAMPLES, stdout=out, stderr=subprocess.STDOUT
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def client(broker_url: str, tmp_path: Path) -> Iterator[httpx.Client]:
    port = free_port()
    server = Process(broker_url, tmp_path / "uvicorn.log", "uvicorn", "fastapi_app:api", "--port", str(port))
    worker = Process(broker_url, tmp_path / "worker.log", "runq", "worker", "fastapi_app:queue", "--pool", "async")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            def up() -> bool:
                assert server.proc.poll() is None, (tmp_path / "uvicorn.log").read_text()
                try:
                    return http.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, timeout=60, interval=0.1)
            yield http
    finally:
        server.stop()
        worker.stop()
    log = (tmp_path / "uvicorn.log").read_text()
    assert "Application shutdown complete." in log and "Traceback" not in log, log  # the lifespan closed the App


def test_submit_then_await_the_result(client: httpx.Client) -> None:
    submitted = client.post("/reports", json={"rows": 4, "seconds_per_row": 0.01})
    assert submitted.status_code == 202
    task_id = submitted.json()["id"]
    assert submitted.headers["location"] == f"/tasks/{task_id}"

    done = client.get(f"/tasks/{task_id}/result", params={"timeout": 30})
    assert done.status_code == 200, done.text
    assert done.json() == {
        "id": task_id,
        "status": "succeeded",
        "progress": {"value": 1.0, "message": "row 4 of 4"},
        "result": {"rows": 4, "total": 6},
    }
    assert client.get(f"/tasks/{task_id}").json()["status"] == "succeeded"


def test_await_with_timeout_poll_and_cancel(client: httpx.Client) -> None:
    task_id = client.post("/reports", json={"rows": 300, "seconds_per_row": 0.1}).json()["id"]
    waited = client.get(f"/tasks/{task_id}/result", params={"timeout": 0.3})
    assert waited.status_code == 202  # not done yet: poll the Location
    assert waited.headers["location"] == f"/tasks/{task_id}"
    assert waited.json()["status"] in {"pending", "running"}
    assert client.delete(f"/tasks/{task_id}").json() == {"cancelled": True}
    assert client.get(f"/tasks/{task_id}").json()["status"] == "cancelled"
    assert client.get("/tasks/default.0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/tasks/not-an-id").status_code == 404
    assert client.post("/reports", json={"rows": -1}).status_code == 422


def test_event_stream_reports_status_changes_and_progress_and_ends(client: httpx.Client) -> None:
    task_id = client.post("/reports", json={"rows": 10, "seconds_per_row": 0.1}).json()["id"]
    events: list[tuple[str, dict[str, object]]] = []
    with client.stream("GET", f"/tasks/{task_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in stream.iter_lines():  # returns when the server ends the stream
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses[-1] == "succeeded"
    assert statuses == sorted(set(statuses), key=["pending", "running", "succeeded"].index)  # in order, no repeats
    progress = [data["progress"] for kind, data in events if kind == "progress"]
    assert progress and all(data is not None for data in progress)  # the rows, as the task reported them
    values = [data["value"] for data in progress]
    assert values == sorted(values)  # (the last may come with the final status: see "done")
    done = {"value": 1.0, "message": "row 10 of 10"}
    assert events[-1] == (
        "done",
        {"id": task_id, "status": "succeeded", "progress": done, "result": {"rows": 10, "total": 45}},
    )
