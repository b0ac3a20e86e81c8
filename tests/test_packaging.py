"""The distributions ``python -m build`` makes, installed the way the Dockerfile installs them.

Built once per session (``built()``): the sdist, then the wheel from the sdist (``build``'s
default, so a file the sdist forgot breaks the wheel), then a fresh virtualenv with the wheel
and its extras installed from a requirements file, exactly as the image's final stage does.
tests/test_container.py runs the image's commands in that virtualenv.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

EXTRAS = "dashboard,postgres"  # as the Dockerfile installs it


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path
    bin: Path  # the fresh virtualenv's bin/, with runq installed from the wheel

    def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert match
    return match.group(1)


@functools.cache
def built() -> Built:
    try:
        return _build()
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        raise AssertionError(f"{exc.cmd} failed with {exc.returncode}:\n{output[-5000:]}") from None


def _build() -> Built:
    work = Path(tempfile.mkdtemp(prefix="runq-dist-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    dist = work / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], check=True, capture_output=True)
    [wheel], [sdist] = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    requirements = work / "requirements.txt"
    requirements.write_text(f"runq[{EXTRAS}] @ {wheel.as_uri()}\n")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--requirement", str(requirements)],
        check=True,
        capture_output=True,
        env=env,
        timeout=600,
    )
    return Built(wheel, sdist, venv / "bin")


@pytest.fixture(scope="module")
def dist() -> Built:
    return built()


def package_data() -> set[str]:
    """Every non-Python file runq needs at run time, as found in the source tree."""
    files = set()
    for pattern in ("*.lua", "*.sql", "py.typed"):
        files |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "runq").rglob(pattern)}
    files |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "runq/dashboard/static").rglob("*") if p.is_file()}
    return files


def test_wheel_and_sdist_hold_the_lua_sql_and_static_files(dist: Built) -> None:
    data = package_data()
    assert any(f.endswith(".lua") for f in data) and any(f.endswith(".sql") for f in data)
    assert "runq/dashboard/static/index.html" in data
    wheel_files = set(zipfile.ZipFile(dist.wheel).namelist())
    assert data <= wheel_files, sorted(data - wheel_files)
    assert "runq/contrib/django/management/commands/runq_worker.py" in wheel_files
    assert f"runq-{project_version()}.dist-info/licenses/LICENSE" in wheel_files
    with tarfile.open(dist.sdist) as sdist:
        prefix = f"runq-{project_version()}/"
        sdist_files = {name.removeprefix(prefix) for name in sdist.getnames()}
    assert data <= sdist_files, sorted(data - sdist_files)
    assert {"pyproject.toml", "README.md", "CHANGELOG.md", "LICENSE"} <= sdist_files


def test_metadata_has_classifiers_and_the_version(dist: Built) -> None:
    version = project_version()
    assert dist.wheel.name == f"runq-{version}-py3-none-any.whl"
    metadata = zipfile.ZipFile(dist.wheel).read(f"runq-{version}.dist-info/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert "Classifier: Framework :: Django" in metadata
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text()


def test_runq_version_comes_from_the_installed_metadata(dist: Built, tmp_path: Path) -> None:
    shown = dist.run("runq", "--version", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"runq, version {project_version()}"
    where = dist.run("python", "-c", "import runq; print(runq.__file__)", cwd=tmp_path)
    assert str(dist.bin.parent) in where.stdout  # the wheel's copy, not this checkout's


def test_runq_demo_runs_from_the_installed_wheel(dist: Built, tmp_path: Path) -> None:
    # The Lua/SQL files are loaded from the installed package: SQLite here, so the schema.
    demo = dist.run("runq", "demo", cwd=tmp_path, timeout=300)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # its temporary SQLite file was not left in the cwd
