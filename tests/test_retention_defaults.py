"""Which tasks outlive the short default result_ttl, and why.

The default keeps a finished task ten minutes (runq/models.py: DEFAULT_RESULT_TTL). Two kinds
of task are kept longer unless their result_ttl was chosen (by their task or their call): a
workflow step whose result a later step reads (a chord's callback reads its members' results
when it starts, which a backlog may delay: runq/workflow.py keeps them a day), and a task with
an idempotency key (the key answers only while its task is kept: App.message keeps it key_ttl).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import runq
from runq.models import DEFAULT_RESULT_TTL, WORKFLOW_RESULT_TTL


def stored_ttls(path: Path) -> dict[str, float]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, result_ttl FROM runq_tasks"))


def test_steps_read_by_a_later_step_are_kept_a_day_unless_chosen(tmp_path: Path) -> None:
    path = tmp_path / "runq.db"
    app = runq.App(f"sqlite:///{path}")

    @app.task
    def add(a: int, b: int = 0) -> int:
        return a + b

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    chain = runq.chain(add.s(1, 2), add.s(10)).delay()
    chord = runq.chord(runq.group(add.s(1, 1), add.s(2, 2).options(result_ttl=30)), total.s()).delay()
    alone = add.delay(5, 5)
    ttls = stored_ttls(path)
    last = chain.id
    assert ttls[alone.id] == DEFAULT_RESULT_TTL  # nothing reads it: the short default
    assert ttls[last] == DEFAULT_RESULT_TTL  # the chain's last step: nothing reads it either
    kept = sorted(ttl for task_id, ttl in ttls.items() if task_id not in (alone.id, last, chord.id))
    # the chain's first step and the chord's first member: a day; the member with its own 30 s keeps it
    assert kept == [30.0, WORKFLOW_RESULT_TTL, WORKFLOW_RESULT_TTL], ttls
    assert ttls[chord.id] == DEFAULT_RESULT_TTL and len(ttls) == 6
    app.close()


def test_a_keyed_task_is_kept_as_long_as_its_key_holds(tmp_path: Path) -> None:
    path = tmp_path / "runq.db"
    app = runq.App(f"sqlite:///{path}")
    keyed = app.enqueue("t", key="once")
    chosen = app.enqueue("t", key="twice", result_ttl=30)
    plain = app.enqueue("t")
    ttls = stored_ttls(path)
    assert ttls == {keyed.id: app.settings.key_ttl, chosen.id: 30.0, plain.id: DEFAULT_RESULT_TTL}
    [claim] = app.broker.claim(["default"], "w", 1, 30)
    assert claim.id == keyed.id
    outcome = runq.models.Outcome(claim.id, claim.token, "succeeded", result="1", result_ttl=ttls[claim.id])
    assert app.broker.settle([outcome])
    assert app.enqueue("t", key="once").id == keyed.id  # the key still answers with the first task
    app.close()
