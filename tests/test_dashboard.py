"""The dashboard (issue 7): HTTP API, token, /metrics, SSE, an OpenAPI fuzz run and the page in Chromium.

The dashboard runs in uvicorn on a background thread and is called over real HTTP,
so the tests see what a browser or a Prometheus scraper sees (streaming included).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi", reason="the dashboard extra is not installed: pip install -e '.[dev]'")

import uvicorn
from prometheus_client.parser import text_string_to_metric_families

import runq
from runq.dashboard import check_bind, create_app
from runq.models import Outcome
from runq.settings import Settings
from tests.conftest import ROOT, WITH_POSTGRES, wait_until
from tests.support.servers import free_port

BROKER_KINDS = WITH_POSTGRES  # every broker, PostgreSQL included

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Dashboard:
    """``create_app(app)`` served by uvicorn on a loopback port in a daemon thread."""

    def __init__(
        self, app: runq.App, token: str | None = None, interval: float = 0.2, hosts: tuple[str, ...] = ()
    ) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            create_app(app, token, interval=interval, hosts=hosts),
            log_level="warning",
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=20)
        assert self.server.started, "uvicorn did not start"

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=20)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


@pytest.fixture
def serve(app: runq.App) -> Iterator[Callable[..., Dashboard]]:
    started: list[Dashboard] = []

    def start(
        token: str | None = None, of: runq.App | None = None, interval: float = 0.2, hosts: tuple[str, ...] = ()
    ) -> Dashboard:
        dashboard = Dashboard(of or app, token, interval, hosts)
        started.append(dashboard)
        return dashboard

    yield start
    for dashboard in started:
        dashboard.stop()


@pytest.fixture
def api(serve: Callable[..., Dashboard]) -> Iterator[httpx.Client]:
    with serve().client() as client:
        yield client


def make_failed(app: runq.App, name: str = "boom", message: str = "it broke") -> str:
    """A task in the dead-letter set without a worker: claim it and settle it as failed."""
    task_id = app.enqueue(name, [1]).id
    [claim] = app.broker.claim(["default"], "test-worker", 1, 30.0)
    assert claim.id == task_id
    error = {"type": "ValueError", "message": message, "traceback": None}
    assert app.broker.settle([Outcome(claim.id, claim.token, "failed", error=error)]) == [True]
    return task_id


# -- API ---------------------------------------------------------------------------------


def test_submit_then_inspect_list_and_queue_depths(api: httpx.Client) -> None:
    body = {"name": "send_email", "args": ["a@b.c"], "kwargs": {"subject": "hi"}, "queue": "emails", "priority": 5}
    response = api.post("/api/tasks", json=body)
    assert response.status_code == 202
    task_id = response.json()["id"]
    assert response.json()["status"] == "pending"

    info = api.get(f"/api/tasks/{task_id}").json()
    assert info | {"enqueued_at": None} == {
        "id": task_id, "name": "send_email", "queue": "emails", "status": "pending", "priority": 5,
        "attempts": 0, "args": ["a@b.c"], "kwargs": {"subject": "hi"}, "result": None, "error": None,
        "enqueued_at": None, "started_at": None, "finished_at": None, "worker": None, "key": None, "eta": None,
        "progress": None,
    }  # fmt: skip
    later = api.post("/api/tasks", json={"name": "send_email", "delay": 3600}).json()
    assert later["status"] == "scheduled"
    keyed = [api.post("/api/tasks", json={"name": "x", "key": "inv-42"}).json()["id"] for _ in range(2)]
    assert keyed[0] == keyed[1]

    assert [t["id"] for t in api.get("/api/tasks", params={"status": "pending", "queue": "emails"}).json()] == [task_id]
    assert len(api.get("/api/tasks", params={"limit": 2}).json()) == 2
    queues = {q["name"]: q for q in api.get("/api/queues").json()}
    assert (queues["emails"]["pending"], queues["default"]["scheduled"], queues["default"]["pending"]) == (1, 1, 1)
    stats = api.get("/api/stats").json()
    assert stats["counters"]["enqueued"] == 3
    assert api.get("/api/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({}, 422, "name"),
        ({"name": ""}, 422, "name"),
        ({"name": "t", "priority": 101}, 422, "priority"),
        ({"name": "t", "delay": -1}, 422, "delay"),
        ({"name": "t", "queue": "no spaces"}, 422, "queue"),
        ({"name": "t", "args": {"a": 1}}, 422, "args"),
        ({"name": "t", "bogus": 1}, 422, "bogus"),
        ({"name": "t", "args": ["x" * (1024 * 1024 + 1)]}, 422, "max_payload"),
        ({"name": "t", "delay": 1e12}, 422, "10 years"),
        ({"name": "\u001b[2J"}, 422, "control characters"),
    ],
)
def test_bad_submissions_get_a_clear_4xx(api: httpx.Client, body: dict[str, Any], status: int, says: str) -> None:
    response = api.post("/api/tasks", json=body)
    assert response.status_code == status, response.text
    assert says in response.text
    assert api.get("/api/stats").json()["counters"]["enqueued"] == 0


def test_runq_refusals_are_422_with_runq_s_message(api: httpx.Client) -> None:
    for raw in (b'{"name": "t", "args": [NaN]}', b'{"name": "t", "delay": NaN}'):  # Python's json reads NaN
        response = api.post("/api/tasks", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
    assert "JSON-serialisable" in response.text or "finite" in response.text
    response = api.post("/api/tasks", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_unknown_ids_filters_and_limits_are_4xx(api: httpx.Client) -> None:
    assert api.get("/api/tasks/not-an-id").status_code == 404
    assert api.get("/api/tasks/default.00000000000000000000000000").status_code == 404
    assert api.post("/api/tasks/default.00000000000000000000000000/cancel", json={}).status_code == 404
    assert api.post("/api/tasks/nope/retry", json={}).status_code == 404
    assert api.get("/api/tasks", params={"status": "lost"}).status_code == 422
    assert api.get("/api/tasks", params={"limit": 0}).status_code == 422
    assert api.get("/api/tasks", params={"queue": "bad queue"}).status_code == 422
    assert api.post("/api/purge", json={"status": "running"}).status_code == 422


def test_cancel_and_retry_follow_the_lifecycle(api: httpx.Client) -> None:
    task_id = api.post("/api/tasks", json={"name": "t"}).json()["id"]
    assert api.post(f"/api/tasks/{task_id}/retry", json={}).status_code == 409  # pending: nothing to retry
    cancelled = api.post(f"/api/tasks/{task_id}/cancel", json={})
    assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelled")
    again = api.post(f"/api/tasks/{task_id}/cancel", json={})
    assert again.status_code == 409
    assert "finished" in again.json()["detail"]
    retried = api.post(f"/api/tasks/{task_id}/retry", json={}).json()
    assert (retried["status"], retried["attempts"]) == ("pending", 0)


def test_dead_letter_retry_and_purge_only_by_post(app: runq.App, api: httpx.Client) -> None:
    failed = [make_failed(app) for _ in range(3)]
    dead = api.get("/api/tasks", params={"status": "failed"}).json()
    assert sorted(t["id"] for t in dead) == sorted(failed)
    assert dead[0]["error"]["message"] == "it broke"

    retried = api.post(f"/api/tasks/{failed[0]}/retry", json={}).json()
    assert (retried["status"], retried["attempts"], retried["error"]) == ("pending", 0, None)
    assert api.get("/api/purge").status_code == 405  # no state change through GET
    assert api.request("DELETE", "/api/tasks/" + failed[1], json={}).status_code == 405
    assert api.post("/api/purge", json={}).json() == {"purged": 2}
    assert api.get("/api/tasks", params={"status": "failed"}).json() == []
    assert api.get(f"/api/tasks/{failed[0]}").json()["status"] == "pending"


def test_snapshot_carries_what_the_page_shows(app: runq.App, api: httpx.Client) -> None:
    make_failed(app)
    app.enqueue("t")
    snap = api.get("/api/snapshot").json()
    assert set(snap) == {"time", "stats", "workers", "dead", "recent", "periodic", "paused", "retained"}
    assert snap["retained"]["tasks"] == 1  # the failed task (kept until purged)
    assert isinstance(snap["retained"]["storage_bytes"], int)  # every broker here can say
    assert [t["status"] for t in snap["recent"]] == ["pending", "failed"]
    assert len(snap["dead"]) == 1
    assert snap["stats"]["queues"]["default"]["pending"] == 1


def test_events_stream_snapshots_and_sees_changes(app: runq.App, api: httpx.Client) -> None:
    def pending(data: dict[str, Any]) -> int:
        return sum(q["pending"] for q in data["stats"]["queues"].values())

    seen: list[int] = []
    deadline = time.monotonic() + 20
    with api.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event == "snapshot":
                seen.append(pending(json.loads(line.removeprefix("data: "))))
                if seen == [0]:
                    app.enqueue("t")
                    app.enqueue("t")
                if seen[-1] == 2 or time.monotonic() > deadline:
                    break
    assert seen[0] == 0
    assert seen[-1] == 2


# -- token and binding -------------------------------------------------------------------------


def test_a_token_guards_the_page_the_api_and_the_metrics(serve: Callable[..., Dashboard]) -> None:
    dashboard = serve(token="s3cret")
    guarded = [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("GET", "/api/stats"),
        ("GET", "/api/tasks"),
        ("GET", "/api/snapshot"),
        ("GET", "/api/events"),
        ("GET", "/api/health"),
        ("POST", "/api/tasks"),
        ("POST", "/api/purge"),
    ]
    with dashboard.client() as anonymous, dashboard.client("wrong") as wrong, dashboard.client("s3cret") as good:
        for method, path in guarded:
            for client in (anonymous, wrong):
                response = client.request(method, path, json={"name": "t"})
                assert response.status_code == 401, (method, path)
            assert anonymous.request(method, path, params={"token": "wrong"}, json={}).status_code == 401
        assert "token" in anonymous.get("/").text  # the page asks for it
        assert anonymous.get("/api/stats").headers["www-authenticate"] == "Bearer"
        assert good.post("/api/tasks", json={"name": "t"}).status_code == 202
        assert good.get("/metrics").status_code == 200
        assert anonymous.get("/", params={"token": "s3cret"}).status_code == 200
        assert anonymous.get("/api/stats", params={"token": "s3cret"}).status_code == 200
        # Public: assets and the API's description hold no data.
        for path in ("/static/app.js", "/static/style.css", "/docs", "/openapi.json"):
            assert anonymous.get(path).status_code == 200, path
        assert "HTTPBearer" in anonymous.get("/openapi.json").text


def test_refuses_a_public_address_without_token() -> None:
    check_bind("127.0.0.1", None, False)
    check_bind("localhost", None, False)
    check_bind("::1", None, False)
    check_bind("0.0.0.0", "t", False)
    check_bind("0.0.0.0", None, True)
    with pytest.raises(ValueError, match="--token"):
        check_bind("0.0.0.0", None, False)
    with pytest.raises(ValueError, match="--insecure"):
        check_bind("::", None, False)


def test_cli_exits_2_for_a_public_address_without_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RUNQ_DASHBOARD_TOKEN"} | {"PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "runq",
        "dashboard",
        "tests.tasks:app",
        "--host",
        "0.0.0.0",
        "--port",
        "1",
        "--no-token",
    ]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "without a token" in done.stderr
    assert "Traceback" not in done.stderr


@contextlib.contextmanager
def cli_dashboard(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """``runq dashboard`` in a subprocess on a free port and a fresh SQLite file; stopped with
    SIGINT, which must exit 0. Yields the process, its port and its log file."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    cmd = [sys.executable, "-m", "runq", "dashboard", "tests.tasks:app", "--port", str(port), "--url", url]
    log = tmp_path / "dashboard.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc, port, log
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()


def test_cli_serves_the_dashboard(tmp_path: Path) -> None:
    with cli_dashboard(tmp_path, {**os.environ, "RUNQ_DASHBOARD_TOKEN": "tok"}) as (proc, port, log):

        def health() -> int:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/health", headers={"Authorization": "Bearer tok"})
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                return 0
            return response.status_code

        assert wait_until(health, timeout=30) == 200
        assert httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 401
        assert (tmp_path / "cli.db").exists()  # --url was used


# -- cross-site requests, DNS rebinding, security headers (issue 11.3) ---------------------------

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_another_site_cannot_change_state_with_or_without_token(
    app: runq.App, serve: Callable[..., Dashboard], token: str | None
) -> None:
    dashboard = serve(token=token)
    make_failed(app)
    evil = {"Origin": "http://evil.example"}
    with dashboard.client(token) as client:
        refused = [
            (client.post("/api/purge", content=b"status=failed", headers=evil | FORM), 403),  # an HTML form
            (client.post("/api/purge", json={}, headers=evil), 403),
            (client.post("/api/purge", json={}, headers={"Origin": "null"}), 403),
            (
                client.post("/api/purge", json={}, headers={"Origin": dashboard.url.replace("127.0.0.1", "localhost")}),
                403,
            ),
            (client.post("/api/purge", json={}, headers={"Sec-Fetch-Site": "cross-site"}), 403),
            (client.post("/api/purge", json={}, headers={"Sec-Fetch-Site": "same-site"}), 403),
            (client.post("/api/purge", content=b"status=failed", headers=FORM), 415),
            (client.post("/api/purge", content=b"{}", headers={"Content-Type": "text/plain"}), 415),
            (client.post("/api/purge"), 415),  # what fetch(url, {method: "POST", mode: "no-cors"}) sends
            (client.post("/api/tasks", content=b'{"name": "t"}', headers=evil | FORM), 403),
        ]
        for response, status in refused:
            assert response.status_code == status, (response.request.headers, response.text)
        assert "detail" in refused[0][0].json()
        assert app.stats().counters["enqueued"] == 1  # nothing was enqueued
        assert len(app.list("failed")) == 1  # nothing was purged
        own = {"Origin": dashboard.url, "Sec-Fetch-Site": "same-origin"}
        assert client.post("/api/purge", json={}, headers=own).json() == {"purged": 1}
        assert client.get("/api/stats", headers=evil | {"Sec-Fetch-Site": "cross-site"}).status_code == 200


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_a_foreign_host_header_is_refused(serve: Callable[..., Dashboard], token: str | None) -> None:
    dashboard = serve(token=token, hosts=("0.0.0.0", "dash.example"))
    port = dashboard.url.rpartition(":")[2]
    with dashboard.client(token) as client:
        for host in ("attacker.example", f"attacker.example:{port}", "0.0.0.0", "127.0.0.1.evil.example", ""):
            for path in ("/", "/api/stats", "/metrics", "/static/app.js", "/openapi.json"):
                response = client.get(path, headers={"Host": host})
                assert response.status_code == 400, (host, path)
            assert "allowed-host" in response.json()["detail"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2", "DASH.example"):
            assert client.get("/api/stats", headers={"Host": host}).status_code == 200, host
        behind_proxy = {"Host": "dash.example", "Origin": "https://dash.example"}
        assert client.post("/api/purge", json={}, headers=behind_proxy).status_code == 200


def test_security_headers_forbid_inline_script_and_framing(serve: Callable[..., Dashboard]) -> None:
    dashboard = serve()
    with dashboard.client() as client:
        for response in (client.get("/"), client.get("/api/stats"), client.get("/", headers={"Host": "evil.example"})):
            csp = response.headers["content-security-policy"]
            assert "script-src 'self';" in csp
            assert "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in client.get("/").text  # the page has no inline script to allow


def test_cli_makes_a_token_and_prints_the_login_url(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RUNQ_DASHBOARD_TOKEN"}
    with cli_dashboard(tmp_path, env) as (proc, port, log):

        def login() -> str:
            assert proc.poll() is None, log.read_text()
            found = [w for w in log.read_text().split() if w.startswith(f"http://127.0.0.1:{port}/?token=")]
            return found[0] if found else ""

        token = wait_until(login, timeout=30).partition("?token=")[2]
        assert len(token) >= 32

        def health(headers: dict[str, str]) -> int:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/health", headers=headers).status_code
            except httpx.TransportError:
                return 0

        assert wait_until(lambda: health({"Authorization": f"Bearer {token}"}), timeout=30) == 200
        assert health({}) == 401


def test_broker_outage_is_503_and_broker_up_0(serve: Callable[..., Dashboard], tmp_path: Path) -> None:
    down = runq.App(settings=Settings.from_env(url=f"redis://127.0.0.1:{free_port()}/0").with_(connect_timeout=0.5))
    try:
        with serve(of=down).client() as client:
            assert client.get("/api/health").status_code == 503
            response = client.get("/api/stats")
            assert response.status_code == 503
            assert "broker unavailable" in response.json()["detail"]
            assert "runq_broker_up 0.0" in client.get("/metrics").text
    finally:
        down.close()


# -- metrics ---------------------------------------------------------------------------------


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_report_depths_counters_latency_and_workers(
    app: runq.App, broker_url: str, api: httpx.Client, start_worker: Callable[..., Any]
) -> None:
    make_failed(app)
    app.enqueue("t", queue="idle")
    app.enqueue("t", queue="idle", delay=3600)
    metrics = scrape(api)
    assert metrics[("runq_broker_up", ())] == 1
    assert metrics[("runq_queue_tasks", (("queue", "idle"), ("state", "pending")))] == 1
    assert metrics[("runq_queue_tasks", (("queue", "idle"), ("state", "scheduled")))] == 1
    assert metrics[("runq_queue_tasks", (("queue", "default"), ("state", "failed")))] == 1
    assert metrics[("runq_tasks_enqueued_total", ())] == 3
    assert metrics[("runq_tasks_failed_total", ())] == 1
    assert metrics[("runq_workers", ())] == 0

    start_worker(broker_url, "--pool", "thread", "--concurrency", "2")
    handles = [app.enqueue("add", [i, i]) for i in range(5)]
    assert [h.result(timeout=60) for h in handles] == [0, 2, 4, 6, 8]
    wait_until(lambda: scrape(api)[("runq_workers", ())] == 1, timeout=30)
    metrics = scrape(api)
    assert metrics[("runq_tasks_succeeded_total", ())] == 5
    assert metrics[("runq_worker_slots", ())] == 2
    for name in ("runq_recent_wait_seconds", "runq_recent_run_seconds"):
        assert {q for (n, labels), _ in metrics.items() if n == name for _, q in labels} == {"p50", "p95", "p99"}
    assert metrics[("runq_throughput_tasks_per_second", ())] > 0

    workers = api.get("/api/workers").json()
    assert len(workers) == 1
    assert workers[0]["pool"] == "thread"
    assert 0 <= workers[0]["heartbeat_age"] < 30


def test_two_dashboards_in_one_process_have_their_own_registries(app: runq.App) -> None:
    # A global registry would refuse the second collector ("Duplicated timeseries").
    first, second = create_app(app), create_app(app)
    assert first is not second


# -- OpenAPI fuzzing ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_schemathesis_finds_no_server_error(app: runq.App, serve: Callable[..., Dashboard]) -> None:
    """Every documented operation, fed generated (and malformed) input, answers without a 5xx.

    Bounded: a few dozen examples per operation and an overall deadline, so it fits the suite.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    make_failed(app)
    app.enqueue("t", queue="default")
    dashboard = serve()
    schema = schemathesis.openapi.from_url(f"{dashboard.url}/openapi.json")
    deadline = time.monotonic() + 45
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/events":  # an endless stream: covered by its own test
            continue

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            # Rules between fields (soft_timeout < timeout; a concurrency key must be an argument the
            # kwargs give) are beyond JSON Schema: a schema-valid submission may be refused (422) there alone.
            tasks = case.operation.path == "/api/tasks"
            excluded = [positive_data_acceptance] if tasks else []
            if time.monotonic() < deadline:  # a state change carries the JSON type the guard asks for
                headers = {"Content-Type": "application/json"}
                case.call_and_validate(base_url=dashboard.url, headers=headers, excluded_checks=excluded)

        check()
        checked.append(operation.label)
    assert len(checked) >= 10, checked
    assert time.monotonic() < deadline, "the fuzz run hit its deadline before covering every operation"


# -- the page in a real browser ------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: apt-get install chromium chromium-driver (bash .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    sync_api.expect.set_options(timeout=30_000)  # a loaded 2-core machine: wait long, never sleep
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def test_page_shows_live_counts_and_retries_a_dead_letter(
    app: runq.App,
    broker_url: str,
    serve: Callable[..., Dashboard],
    browser: Any,
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    dashboard = serve(token="s3cret")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(f"{dashboard.url}/?token=s3cret")
    expect(page.locator("#conn")).to_have_text("live")
    assert "token" not in page.url  # kept in sessionStorage, not in the address bar
    pending = page.get_by_test_id("count-pending")
    expect(pending).to_have_text("0")

    for i in range(3):
        app.enqueue("add", [i, i])
    expect(pending).to_have_text("3")

    worker = start_worker(broker_url, "--pool", "thread", "--concurrency", "2")
    failing = app.enqueue("picky", ["value"])  # ValueError is outside retry_for: dead-lettered at once
    expect(page.get_by_test_id("count-succeeded")).to_have_text("3")
    expect(page.get_by_test_id("count-failed")).to_have_text("1")
    expect(pending).to_have_text("0")
    expect(page.locator("#workers tr")).to_have_count(1)
    expect(page.locator("#dead tr")).to_have_count(1)
    expect(page.locator("#dead")).to_contain_text("picky")

    # Stop the worker so the retried task stays visible as pending.
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    page.get_by_test_id(f"retry-{failing.id}").click()
    expect(page.locator("#toast")).to_contain_text("Retried")
    expect(page.get_by_test_id("count-failed")).to_have_text("0")
    expect(pending).to_have_text("1")
    expect(page.locator("#dead-empty")).to_be_visible()
    info = app.info(failing.id)
    assert info is not None
    assert (info.status.value, info.attempts) == ("pending", 0)

    # Pause the queue from its row: marked paused, kept in the broker; the same button resumes it.
    page.get_by_test_id("pause-default").click()
    expect(page.locator("#toast")).to_contain_text("Paused default")
    expect(page.get_by_test_id("paused-default")).to_be_visible()
    expect(page.get_by_test_id("pause-default")).to_have_text("Resume")
    assert app.paused() == {"default"}
    page.get_by_test_id("pause-default").click()
    expect(page.locator("#toast")).to_contain_text("Resumed default")
    expect(page.get_by_test_id("paused-default")).to_have_count(0)
    assert app.paused() == set()

    page.get_by_label("Task id").fill(failing.id)
    page.get_by_role("button", name="Find").click()
    expect(page.locator("#detail")).to_contain_text("picky")
    expect(page.locator("#detail")).to_contain_text(failing.id)
    page.keyboard.press("Escape")
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # A reload (no token in the address bar any more) signs in again from sessionStorage.
    page.reload()
    expect(page.locator("#conn")).to_have_text("live")
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(f"{dashboard.url}/")
    expect(phone.locator("input[name=token]")).to_be_visible()  # a new tab without a token
    phone.close()
    page.close()


@pytest.mark.skipif(
    not os.environ.get("RUNQ_DASHBOARD_SCREENSHOT"), reason="set RUNQ_DASHBOARD_SCREENSHOT=docs/dashboard.png"
)
@pytest.mark.timeout(300)
def test_screenshot_with_work_in_every_state(
    app: runq.App, broker_url: str, serve: Callable[..., Dashboard], browser: Any, start_worker: Callable[..., Any]
) -> None:
    """Regenerates docs/dashboard.png: a minute of traffic, then tasks in every state.

    ``RUNQ_DASHBOARD_SCREENSHOT=$PWD/docs/dashboard.png .venv/bin/pytest tests/test_dashboard.py -k screenshot``
    """
    from playwright.sync_api import expect

    from runq.tasks import Signature

    if not broker_url.startswith("sqlite"):
        pytest.skip("one screenshot is enough")
    dashboard = serve(interval=0.5)
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(dashboard.url)
    expect(page.locator("#conn")).to_have_text("live")
    start_worker(broker_url, "--pool", "thread", "--concurrency", "6", "--queues", "default,reports")

    total = 0
    for wave in range(120):  # one wave per page update: about a minute of varying load
        size = 4 + (wave * 7) % 13 + (12 if 40 <= wave < 70 else 0)
        app.enqueue_many([Signature("add", (wave, i)) for i in range(size)])
        total += size
        wait_until(lambda: app.stats().counters.get("succeeded", 0) >= total, timeout=60)  # noqa: B023
        updated = page.evaluate("document.body.dataset.updated")
        page.wait_for_function(f"document.body.dataset.updated !== {json.dumps(updated)}")

    # Oldest first, so the recent-tasks table ends up with a mix of states.
    for i in range(4):
        app.enqueue("report", [i], queue="reports", delay=600 + 60 * i)
    app.enqueue("add", [1, 2], delay=3600)
    emails = [app.enqueue("send_email", [f"user{i}@example.com"], queue="emails") for i in range(9)]
    for handle in emails[-2:]:
        handle.cancel()
    for handle in emails[:2]:
        app.enqueue("send_receipt", [handle.id], queue="emails", after=[handle])
    for seconds in (300, 300, 300):
        app.enqueue("sleep", [seconds], queue="reports")
    for kind in ("value", "value", "other"):
        app.enqueue("picky", [kind])
    last = [app.enqueue("add", [i, i]) for i in range(3)]
    assert [h.result(timeout=30) for h in last] == [0, 2, 4]
    for state, count in {"failed": 3, "running": 3, "pending": 7, "scheduled": 5, "waiting": 2, "cancelled": 2}.items():
        expect(page.get_by_test_id(f"count-{state}")).to_have_text(str(count))
    expect(page.locator("#workers .chips .id")).to_have_count(3)  # the next heartbeat shows them
    page.screenshot(path=os.environ["RUNQ_DASHBOARD_SCREENSHOT"], full_page=True)


# -- one task's progress and live events (SPEC §10) --------------------------------------------


def claim_and_report(app: runq.App, task_id: str, value: float, message: str) -> Any:
    """Be the worker: claim the task and store a progress report; the claim, to settle later."""
    from runq.models import ProgressReport

    [claim] = app.broker.claim(["default"], "test-worker", 1, 30.0)
    assert claim.id == task_id
    assert app.broker.progress([ProgressReport(claim.id, claim.token, value, message)]) == [True]
    return claim


def test_task_json_and_task_events_carry_progress(app: runq.App, api: httpx.Client) -> None:
    task_id = app.enqueue("t").id
    assert api.get(f"/api/tasks/{task_id}").json()["progress"] is None
    assert api.get("/api/tasks/default.0123456789abcdef0123456789abcdef/events").status_code == 404
    seen: list[dict[str, Any]] = []
    with api.stream("GET", f"/api/tasks/{task_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():  # ends when the server ends the stream: after the final status
            if not line.startswith("data: "):
                continue
            seen.append(json.loads(line.removeprefix("data: ")))
            if len(seen) == 1:
                claim = claim_and_report(app, task_id, 0.5, "half")
                body = api.get(f"/api/tasks/{task_id}").json()
                assert (body["progress"]["value"], body["progress"]["message"]) == (0.5, "half")
            elif (seen[-1]["progress"] or {}).get("message") == "half" and seen[-1]["status"] == "running":
                app.broker.settle([Outcome(claim.id, claim.token, "succeeded", result="7")])
    shown = [(e["status"], (e["progress"] or {}).get("message")) for e in seen]
    assert shown[0] == ("pending", None) and shown[-1] == ("succeeded", "half")
    assert ("running", "half") in shown and set(shown[1:-1]) <= {("running", None), ("running", "half")}


def test_task_view_shows_live_progress(app: runq.App, serve: Callable[..., Dashboard], browser: Any) -> None:
    from playwright.sync_api import expect

    dashboard = serve()
    task_id = app.enqueue("t").id
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(f"{dashboard.url}/#{task_id}")
    detail = page.locator("#detail")
    expect(detail).to_contain_text("pending")
    claim = claim_and_report(app, task_id, 0.4, "copying files")
    expect(page.locator("#detail-progress")).to_contain_text("40% · copying files")
    expect(page.locator("#detail-progress progress")).to_have_attribute("value", "0.4")
    app.broker.settle([Outcome(claim.id, claim.token, "succeeded", result='{"copied": 3}')])
    expect(page.locator("#detail-title")).to_contain_text("succeeded")
    expect(detail).to_contain_text('"copied": 3')  # the final status fetched the task again: its result
    page.close()
