"""``runq.dashboard.api_app``: the dashboard's JSON API mounted in a user's own FastAPI app.

The user's app runs in uvicorn on a loopback port and is called over real HTTP. The mounted
API needs its token (or the user's own auth), and the dashboard's guard holds under the
mount: no other site can make it change state, a foreign ``Host`` is refused (SPEC §7).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi", reason="the dashboard extra is not installed: pip install -e '.[dev]'")

import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException

import runq
from runq.dashboard import api_app
from tests.conftest import wait_until

TOKEN = "s3cret"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Served:
    """A user's FastAPI app served by uvicorn on a loopback port in a daemon thread."""

    def __init__(self, web: FastAPI) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(web, log_level="warning", lifespan="off", ws="none", timeout_graceful_shutdown=1)
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
def serve(app: runq.App) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**options: Any) -> Served:
        """The user's app: a route of its own, and runq's API mounted at /runq."""
        web = FastAPI()

        @web.get("/hello")
        def hello() -> dict[str, str]:
            return {"hello": "world"}

        web.mount("/runq", api_app(app, **options))
        served = Served(web)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def test_the_mounted_api_needs_its_token(app: runq.App, serve: Callable[..., Served]) -> None:
    served = serve(token=TOKEN)
    with served.client() as anonymous, served.client("wrong") as wrong, served.client(TOKEN) as good:
        for method, path in [("GET", "/runq/api/stats"), ("GET", "/runq/api/tasks"), ("POST", "/runq/api/tasks")]:
            for client in (anonymous, wrong):
                assert client.request(method, path, json={"name": "t"}).status_code == 401, (method, path)
        assert anonymous.get("/runq/api/stats").headers["www-authenticate"] == "Bearer"
        submitted = good.post("/runq/api/tasks", json={"name": "report", "kwargs": {"rows": 3}, "priority": 7})
        assert submitted.status_code == 202
        info = good.get(f"/runq/api/tasks/{submitted.json()['id']}").json()
        assert (info["name"], info["priority"], info["kwargs"]) == ("report", 7, {"rows": 3})
        assert good.get("/runq/api/queues").json()[0]["pending"] == 1
        assert anonymous.get("/runq/api/workers", params={"token": TOKEN}).json() == []
        assert anonymous.get("/hello").json() == {"hello": "world"}  # the user's own routes are theirs
        assert "content-security-policy" not in anonymous.get("/hello").headers
        assert good.get("/runq/api/stats").headers["x-frame-options"] == "DENY"
    assert app.stats().counters["enqueued"] == 1


def test_no_web_page_can_steer_the_mounted_api(app: runq.App, serve: Callable[..., Served]) -> None:
    served = serve(token=TOKEN)
    app.enqueue("noop")
    evil = {"Origin": "http://evil.example"}
    with served.client(TOKEN) as client:  # even a request that carries the token
        refused = [
            (client.post("/runq/api/purge", content=b"status=failed", headers=evil | FORM), 403),
            (client.post("/runq/api/tasks", json={"name": "t"}, headers=evil), 403),
            (client.post("/runq/api/tasks", json={"name": "t"}, headers={"Origin": "null"}), 403),
            (client.post("/runq/api/tasks", json={"name": "t"}, headers={"Sec-Fetch-Site": "cross-site"}), 403),
            (client.post("/runq/api/tasks", content=b'{"name": "t"}', headers=FORM), 415),
            (client.post("/runq/api/tasks", content=b'{"name": "t"}', headers={"Content-Type": "text/plain"}), 415),
        ]
        for response, status in refused:
            assert response.status_code == status, (response.request.headers, response.text)
        assert app.stats().counters["enqueued"] == 1  # nothing was enqueued
        [task] = app.list()
        assert client.post(f"/runq/api/tasks/{task.id}/cancel", json={}, headers=evil).status_code == 403
        assert app.info(task.id) is not None and app.info(task.id).status is runq.Status.PENDING  # type: ignore[union-attr]
        own = {"Origin": served.url, "Sec-Fetch-Site": "same-origin"}
        assert client.post(f"/runq/api/tasks/{task.id}/cancel", json={}, headers=own).status_code == 200
        assert client.get("/runq/api/stats", headers=evil | {"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_a_foreign_host_is_refused_unless_named(serve: Callable[..., Served]) -> None:
    open_to_loopback, named = serve(token=TOKEN), serve(token=TOKEN, hosts=("api.example",))
    with open_to_loopback.client(TOKEN) as client:
        refused = client.get("/runq/api/stats", headers={"Host": "api.example"})
        assert refused.status_code == 400 and "hosts=" in refused.json()["detail"]
        assert client.get("/hello", headers={"Host": "api.example"}).status_code == 200  # the user's own rules
    with named.client(TOKEN) as client:
        assert client.get("/runq/api/stats", headers={"Host": "api.example"}).status_code == 200
        assert client.get("/runq/api/stats", headers={"Host": "attacker.example"}).status_code == 400
        behind_proxy = {"Host": "api.example", "Origin": "https://api.example"}
        assert client.post("/runq/api/tasks", json={"name": "t"}, headers=behind_proxy).status_code == 202


def test_the_user_s_own_auth_instead_of_a_token(serve: Callable[..., Served]) -> None:
    def admin(x_user: str = Header(default="")) -> None:
        if x_user != "admin":
            raise HTTPException(403, "admins only")

    served = serve(dependencies=[Depends(admin)])
    with served.client() as client:
        assert client.get("/runq/api/stats").status_code == 403
        assert client.get("/runq/api/stats", headers={"X-User": "admin"}).status_code == 200


def test_it_is_never_built_open(app: runq.App) -> None:
    choices: list[dict[str, Any]] = [{}, {"token": ""}, {"token": None, "dependencies": []}]
    for options in choices:
        with pytest.raises(ValueError, match="token"):
            api_app(app, **options)
