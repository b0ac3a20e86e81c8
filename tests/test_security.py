"""Least privilege and transport security (issue 11.5): only registered task names run; TLS to Redis."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import runq
from tests.conftest import WorkerProcess
from tests.support.servers import REDIS_ACL, TLS, RedisNotInstalled, RedisServer, add_acl_user


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_only_registered_task_names_ever_run(
    pool: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    marker, touched = tmp_path / "imported", tmp_path / "touched"
    monkeypatch.setenv("RUNQ_TEST_IMPORT_MARKER", str(marker))
    app = runq.App(sqlite_url)
    try:
        start_worker(sqlite_url, "--pool", pool, "--concurrency", "2")
        names = {
            "os.system": [f"touch {touched}"],
            "subprocess.call": [["touch", str(touched)]],
            "builtins.eval": [f"open({str(touched)!r}, 'w')"],
            "tests.evil.run": [],  # importable, but not a task of the worker's app
            "tests.evil:run": [],
            "tests.tasks.add": [1, 2],  # the function's dotted path is not its task name
        }
        handles = {name: app.enqueue(name, args) for name, args in names.items()}
        for name, handle in handles.items():
            with pytest.raises(runq.TaskFailed) as failed:
                handle.result(timeout=60)
            assert failed.value.type == "UnknownTask", name
            assert name in failed.value.message
        assert app.enqueue("add", [1, 2]).result(timeout=60) == 3  # the worker itself is fine
        assert not touched.exists()
        assert not marker.exists()  # nothing was imported by name
    finally:
        app.close()


# -- TLS to Redis ------------------------------------------------------------------------------


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key) made with the openssl CLI."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        key,
        "-out",
        cert,
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
    )
    return cert, key


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A TLS-only redis-server whose certificate (for DNS:localhost only) a private CA signed."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is missing")
    directory = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(directory, "runq-test-ca")
    key, csr, cert, ext = (directory / n for n in ("server.key", "server.csr", "server.pem", "ext.cnf"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-out", cert, "-days", "1", "-extfile", ext)
    try:
        server = RedisServer(directory, tls=TLS(cert, key, ca))
    except RedisNotInstalled as exc:
        pytest.skip(str(exc))
    yield server
    server.kill()


def test_rediss_with_a_private_ca_runs_tasks_end_to_end(
    tls_server: RedisServer, start_worker: Callable[..., WorkerProcess]
) -> None:
    tls_server.flush()
    url = tls_server.url
    assert url.startswith("rediss://localhost:") and "ssl_ca_certs=" in url
    app = runq.App(url)
    try:
        start_worker(url, "--pool", "process", "--concurrency", "2")  # the worker and its children
        assert [h.result(timeout=60) for h in [app.enqueue("add", [i, i]) for i in range(5)]] == [0, 2, 4, 6, 8]
    finally:
        app.close()


def test_rediss_refuses_a_wrong_ca_or_a_name_the_certificate_lacks(tls_server: RedisServer, tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path, "someone-else")
    port, ca = tls_server.port, tls_server.tls.ca if tls_server.tls else ""
    refused = {
        f"rediss://localhost:{port}/0?ssl_ca_certs={other_ca}": "certificate verify failed",
        f"rediss://localhost:{port}/0": "certificate verify failed",  # the system CAs do not know it
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}": "not valid for '127.0.0.1'",
    }
    for url, says in refused.items():
        app = runq.App(settings=runq.Settings.from_env(url=url).with_(connect_timeout=5))
        try:
            with pytest.raises(runq.BrokerUnavailable) as exc:
                app.enqueue("add", [1, 2])
        finally:
            app.close()
        assert says in str(exc.value), url
        assert "ssl_ca_certs=/path/ca.pem" in str(exc.value)  # says what to fix


def test_the_readme_shows_the_acl_the_conformance_suite_runs_as() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"ACL SETUSER runq on >secret {REDIS_ACL}" in readme


def test_a_user_lacking_a_command_gets_an_error_naming_it(redis_server: RedisServer) -> None:
    redis_server.flush()
    url = add_acl_user(redis_server, "runq-nohgetall", "pw", REDIS_ACL.replace(" +hgetall", ""))
    app = runq.App(url)
    try:
        app.enqueue("add", [1, 2])  # what it has is enough to enqueue
        with pytest.raises(redis.exceptions.NoPermissionError, match="'hgetall' command"):
            app.stats()
    finally:
        app.close()
