"""README.md runs as written, on SQLite and on Redis, so it cannot drift from the code.

Every fenced block of the README is either run here or marked, on the line before its
fence, with ``<!-- not run: why -->``; an unmarked block this test cannot run fails it,
so nothing is skipped silently. The runnable blocks run in README order in one empty
directory, as a reader would type them:

- a Python block whose first line is ``# name.py`` (or ``# package/name.py``) is written to
  that file; any other Python block runs as a script there (``python block.py``). A one-line
  expression whose comment is a Python literal (``h.result(timeout=10)  # 5``) must give that
  value.
- a shell block runs line by line with the venv's ``runq`` on PATH; ``runq worker ...``
  starts a real worker in the background (kept for the rest of the README), and so do
  Django's ``python manage.py runq_worker ...`` and ``django-admin runq_worker ...``; the
  next line runs once the broker lists that worker. ``<id>`` is the id the latest ``runq
  enqueue`` printed; a comment that is a JSON value (``runq result <id> --wait 10  # 5``)
  must be what the line prints. Every line exits 0.

At the end no task may be in the dead-letter set and none may be left ready or running:
an example that enqueues a task its worker cannot run fails here, not for a reader.
Marked Python blocks are still compiled and marked JSON blocks parsed.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import signal
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

import runq
from runq.models import Status
from tests.conftest import ROOT, wait_until

README = ROOT / "README.md"
NOT_RUN = re.compile(r"^\s*<!-- not run: (?P<why>\S.*?) -->\s*$")
PYTHON, SHELL = {"python", "py"}, {"bash", "sh", "shell"}
FILE_HEADER = re.compile(r"^# (?P<name>[\w/]+\.py)\s*$")
COMMAND_TIMEOUT = 60.0
# Commands that start a worker, which runs until the end: runq's own and Django's.
WORKER = re.compile(r"^(runq worker|python manage\.py runq_worker|django-admin runq_worker)(\s|$)")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason given in the README, or None: the block runs


def readme_blocks(path: Path = README) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for token in MarkdownIt().parse("\n".join(lines)):
        if token.type != "fence" or token.map is None:
            continue
        start = token.map[0]
        before = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        marked = NOT_RUN.match(before)
        lang = token.info.split()[0].lower() if token.info.strip() else ""
        blocks.append(Block(start + 1, lang, token.content, marked["why"] if marked else None))
    return blocks


BLOCKS = readme_blocks()


def test_every_block_is_run_or_marked_with_a_reason() -> None:
    unrunnable = [
        f"README.md:{b.line} ({b.lang or 'no language'})"
        for b in BLOCKS
        if b.not_run is None and b.lang not in PYTHON | SHELL
    ]
    assert not unrunnable, f"mark these with <!-- not run: why --> or make them runnable: {unrunnable}"
    assert any(b.not_run is None for b in BLOCKS), "the README should have runnable examples"


def test_marked_blocks_still_parse() -> None:
    """A block not run still has to be valid Python (top-level ``await`` allowed) or JSON."""
    for block in BLOCKS:
        if block.not_run is None:
            continue
        if block.lang in PYTHON:
            compile(block.text, f"README.md:{block.line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        elif block.lang == "json":
            for line in block.text.splitlines():
                json.loads(line)


def test_the_readme_runs_as_written(broker_url: str, tmp_path: Path) -> None:
    with Reader(tmp_path, broker_url) as reader:
        for block in BLOCKS:
            if block.not_run is None:
                reader.run(block)
        reader.check_every_task_ran()


# -- the reader --------------------------------------------------------------------------


@dataclass
class Reader:
    """Someone typing the README's examples into a shell, in one directory."""

    cwd: Path
    url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    last_id: str | None = None
    app: runq.App = field(init=False)

    def __enter__(self) -> Reader:
        self.app = runq.App(self.url)  # the test's own view of the broker
        return self

    def __exit__(self, *_: object) -> None:
        self.app.close()
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def env(self) -> dict[str, str]:
        unset = {"PYTHONPATH", "DJANGO_SETTINGS_MODULE"}  # a reader's shell has neither
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_") and k not in unset}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        if not self.url.startswith("sqlite:"):  # SQLite: the README's default, runq.db in this directory
            env["RUNQ_URL"] = self.url
        return env

    def run(self, block: Block) -> None:
        if block.lang in PYTHON:
            self.python(block)
        else:
            for offset, text in enumerate(block.text.splitlines(), start=1):
                if text.strip() and not text.lstrip().startswith("#"):
                    self.shell(text, block.line + offset)

    def python(self, block: Block) -> None:
        first = block.text.splitlines()[0]
        named = FILE_HEADER.match(first)
        if named:
            path = self.cwd / named["name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text, encoding="utf-8")
            return
        script = self.cwd / f"readme_{block.line}.py"
        script.write_text(with_checks(block.text, block.line + 1), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, script.name], cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT,
        )  # fmt: skip
        assert done.returncode == 0, f"README.md:{block.line} (lines count from the fence + 1):\n{done.stderr}"

    def shell(self, text: str, line: int) -> None:
        command, comment = split_comment(text)
        if "<id>" in command:
            assert self.last_id, f"README.md:{line} uses <id> before any `runq enqueue` printed one"
            command = command.replace("<id>", self.last_id)
        if WORKER.match(command):
            self.start_worker(command, line)
            return
        done = subprocess.run(
            ["bash", "-c", command], cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT,
        )  # fmt: skip
        said = f"README.md:{line}: {command}\nexit {done.returncode}\n{done.stdout}{done.stderr}"
        assert done.returncode == 0, said
        if command.startswith("runq enqueue "):
            self.last_id = done.stdout.strip()
        expected = json_value(comment)
        if expected is not None:
            assert json_value(done.stdout.strip()) == expected, said

    def start_worker(self, command: str, line: int) -> None:
        log = open(self.cwd / f"worker-{line}.log", "ab")  # noqa: SIM115 - the worker writes to it until the end
        with log:
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        self.workers.append(proc)

        def up() -> bool:
            assert proc.poll() is None, f"README.md:{line}: the worker exited:\n{self.logs()}"
            return proc.pid in {w.pid for w in self.app.workers()}

        wait_until(up, timeout=30, interval=0.1)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.cwd.glob("worker-*.log")))

    def check_every_task_ran(self) -> None:
        """Nothing the README enqueued is stuck or dead: a task no worker can run would be."""

        def settled() -> bool:
            return not any(q.pending or q.running or q.waiting for q in self.app.stats().queues.values())

        wait_until(settled, timeout=60, interval=0.1)
        dead = [(t.name, t.queue, t.error) for t in self.app.list(Status.FAILED, None, 20)]
        assert not dead, f"README tasks in the dead-letter set: {dead}\n{self.logs()}"


def split_comment(text: str) -> tuple[str, str]:
    """``cmd 'a # b'   # note`` → (``cmd 'a # b'``, ``note``): the first ``#`` outside quotes."""
    quote = ""
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1].isspace()):
            return text[:index].strip(), text[index + 1 :].strip()
    return text.strip(), ""


def json_value(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def with_checks(source: str, first_line: int) -> str:
    """``expr  # 5`` on one line becomes an assertion that ``expr`` is 5 (line numbers kept)."""
    comments = {tok.start[0]: tok.string[1:].strip() for tok in _tokens(source) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Expr) or node.lineno != node.end_lineno:
            continue
        try:
            expected = ast.literal_eval(comments.get(node.lineno, ""))
        except (ValueError, SyntaxError):
            continue
        expression = ast.get_source_segment(source, node)
        where = f"README.md:{first_line + node.lineno - 1}"
        says = f"{where}: got {{_readme!r}}, the README says {expected!r}"
        lines[node.lineno - 1] = f"assert (_readme := ({expression})) == {expected!r}, f{says!r}"
    return "\n".join(lines) + "\n"


def _tokens(source: str) -> Iterator[tokenize.TokenInfo]:
    return tokenize.generate_tokens(io.StringIO(source).readline)


@pytest.mark.parametrize(
    ("text", "command", "comment"),
    [
        ("runq status                     # tasks per queue", "runq status", "tasks per queue"),
        ("runq enqueue x '[1, \"#2\"]'  # prints", "runq enqueue x '[1, \"#2\"]'", "prints"),
        ("runq result <id> --wait 10", "runq result <id> --wait 10", ""),
    ],
)
def test_shell_comments_are_split_outside_quotes(text: str, command: str, comment: str) -> None:
    assert split_comment(text) == (command, comment)


def test_a_literal_comment_becomes_a_check() -> None:
    exec(with_checks("x = 2\nx + 3   # 5\nx  # a note\n", 10), {})
    with pytest.raises(AssertionError, match=r"README.md:11: got 5, the README says 6"):
        exec(with_checks("x = 2\nx + 3   # 6\n", 10), {})
