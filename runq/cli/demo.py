"""``runq demo``: runq end to end in about fifteen seconds, with nothing set up.

It starts real ``runq worker`` processes on :mod:`runq.cli.demo_tasks` (one async pool for
e-mail, one thread pool for the rest), enqueues a small shop's day of work — a
newsletter batch through ``enqueue_many``, a high-priority password reset, delayed
reports, an idempotent duplicate charge, flaky tasks that succeed on retry and one
charge that ends in the dead-letter set — shows live progress, then a results table
and the broker's metrics. Without ``--url`` it uses a fresh SQLite file in a
temporary directory (``RUNQ_URL`` is ignored on purpose: a demo must never write
into a real queue by accident), so running it twice in a row always works. A ``--url``
must name an empty broker (:func:`check_empty`), and the demo empties it again at the end
(:func:`clean_up`) unless ``--keep``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runq.app import App
from runq.brokers.sqlite import sqlite_path
from runq.cli import console as out
from runq.cli import demo_tasks
from runq.handles import Handle
from runq.logs import mask_url
from runq.models import Percentiles, Status, TaskInfo
from runq.settings import Settings

WORKERS = (  # (pool, queues, concurrency)
    ("async", "emails", 10),
    ("thread", "payments,reports,images", 8),
)
TIMEOUT = 90.0
KINDS = {
    "demo.send_email": "send e-mail (async)",
    "demo.resize_image": "resize image",
    "demo.build_report": "build report",
    "demo.charge_card": "charge card",
}


@dataclass
class Plan:
    """What the demo enqueued, and the facts it will check at the end."""

    handles: list[Handle[Any]] = field(default_factory=list)
    newsletter: list[str] = field(default_factory=list)
    urgent: str = ""
    delayed: dict[str, float] = field(default_factory=dict)  # id -> requested delay
    duplicate: tuple[str, str] = ("", "")
    doomed: str = ""


def run_demo(url: str | None, as_json: bool = False, keep: bool = False) -> int:
    """Run the demo; 0 when every task ended as planned (exactly one in the dead-letter set).

    A ``url`` given must be empty (``ValueError`` otherwise) and is left empty unless ``keep``.
    """
    if url:
        check_empty(url)
    directory = Path(tempfile.mkdtemp(prefix="runq-demo-"))
    given, url = url, url or f"sqlite:///{directory / 'demo.db'}"
    app = App(settings=Settings.from_env(url=url))
    app.tasks.update(demo_tasks.app.tasks)
    try:
        with _workers(url, directory) as procs:
            _wait_for_workers(app, procs, directory)
            started = time.monotonic()
            plan = enqueue_day(app)
            infos = _follow(app, plan, procs, directory, quiet=as_json)
            elapsed = time.monotonic() - started
        report = summarise(app, plan, infos, elapsed)
        report["url"] = mask_url(url)
        if as_json:
            out.echo_json(report)
        else:
            show(report, directory if keep and url.startswith("sqlite") else None)
        return 0 if report["ok"] else 1
    finally:
        app.close()
        if not keep:
            if given:
                clean_up(given)
            shutil.rmtree(directory, ignore_errors=True)


# -- a broker of the user's ------------------------------------------------------------


def check_empty(url: str) -> None:
    """Refuse a broker that holds anything (``ValueError``): the demo's queues, workers and dead
    letter would mix with what is there, and :func:`clean_up` could not tell them apart."""
    held = _held(url)
    if held:
        raise ValueError(
            f"{mask_url(url)} holds {held}; runq demo runs only on an empty broker and empties it again"
            " afterwards: give an empty one (another Redis db number, a new SQLite file, another"
            " PostgreSQL ?schema=), or leave out --url for a temporary SQLite file"
        )


def _held(url: str) -> str:
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        path = Path(sqlite_path(url)[0]).expanduser()
        return "data" if path.exists() and path.stat().st_size > 0 else ""
    if scheme.startswith("redis") or scheme == "unix":
        from runq.brokers.redis.connection import client, parse

        with client(parse(url), {}) as redis:
            keys = int(redis.dbsize())
        return f"{keys} keys" if keys else ""
    app = App(settings=Settings.from_env(url=url))
    try:
        tasks = sum(sum(vars(q).values()) for q in app.stats().queues.values())
        workers = len(app.workers())
    finally:
        app.close()
    return f"{tasks} tasks and {workers} live workers" if tasks or workers else ""


def clean_up(url: str) -> None:
    """Empty what :func:`check_empty` found empty: the SQLite file, runq's Redis keys, or
    (PostgreSQL) every task; PostgreSQL keeps runq's tables and lifetime counters."""
    scheme = url.partition("://")[0].lower()
    if scheme == "sqlite":
        path = Path(sqlite_path(url)[0]).expanduser()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    elif scheme.startswith("redis") or scheme == "unix":
        from runq.brokers.redis.connection import client, parse

        with client(parse(url), {}) as redis:
            for key in list(redis.scan_iter(match="runq:*", count=1000)):
                redis.unlink(key)  # one by one: on a cluster the keys live on different nodes
    else:
        app = App(settings=Settings.from_env(url=url))
        try:
            app.purge(None, None)
        finally:
            app.close()


# -- workers -------------------------------------------------------------------------


@contextmanager
def _workers(url: str, directory: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Real ``runq worker`` processes, stopped with SIGTERM (a graceful shutdown) at the end."""
    procs = []
    try:
        for index, (pool, queues, concurrency) in enumerate(WORKERS):
            command = [sys.executable, "-m", "runq", "worker", "runq.cli.demo_tasks:app", "--url", url]
            command += ["--pool", pool, "--queues", queues, "--concurrency", str(concurrency), "--grace", "5"]
            with open(directory / f"worker-{index}.log", "ab") as log:
                procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _check_alive(procs: list[subprocess.Popen[bytes]], directory: Path) -> None:
    for index, proc in enumerate(procs):
        if proc.poll() is not None:
            log = (directory / f"worker-{index}.log").read_text(errors="replace").strip().splitlines()
            tail = "\n".join(log[-10:])
            raise RuntimeError(f"demo worker {index} exited with code {proc.returncode}:\n{tail}")


def _wait_for_workers(app: App, procs: list[subprocess.Popen[bytes]], directory: Path) -> None:
    """Until every worker's first heartbeat, so wait times measure the queue, not start-up."""
    pids = {proc.pid for proc in procs}
    deadline = time.monotonic() + 30
    while not pids <= {w.pid for w in app.workers()}:
        _check_alive(procs, directory)
        if time.monotonic() > deadline:
            raise RuntimeError("demo workers did not report within 30 s")
        time.sleep(0.05)


# -- the day's work ------------------------------------------------------------------


def enqueue_day(app: App) -> Plan:
    """A small shop's background work, enqueued the five ways runq offers."""
    plan = Plan()
    email, image, report, charge = (demo_tasks.send_email, demo_tasks.resize_image, demo_tasks.build_report,
                                    demo_tasks.charge_card)  # fmt: skip

    # A newsletter: 80 e-mails in one round trip.
    batch = app.enqueue_many([email.s(f"reader{i}@example.com", "newsletter-june") for i in range(80)])
    plan.handles += batch
    plan.newsletter = [h.id for h in batch]
    # Behind it, a password reset that must not wait for the newsletter.
    urgent = app.enqueue(email.name, ["ada@example.com", "password-reset"], priority=10)
    plan.urgent = urgent.id
    plan.handles.append(urgent)
    # Order confirmations; the mail server is busy for three of them (retried).
    for i in range(10):
        plan.handles.append(app.enqueue(email.name, [f"buyer{i}@example.com", "order-confirmation"], {"flaky": i < 3}))
    # Product photos.
    for i in range(30):
        plan.handles.append(app.enqueue(image.name, [f"products/sku-{1000 + i}.jpg", [160, 640, 1280]]))
    # Reports: two now, two scheduled for later.
    for kind, delay in (("sales", 0.0), ("inventory", 0.0), ("refunds", 3.0), ("end-of-day", 6.0)):
        handle = app.enqueue(report.name, [kind, "2024-06-01"], delay=delay or None)
        plan.handles.append(handle)
        if delay:
            plan.delayed[handle.id] = delay
    _enqueue_payments(app, plan, charge.name)
    return plan


def _enqueue_payments(app: App, plan: Plan, name: str) -> None:
    run = uuid.uuid4().hex[:8]  # keys unique per run: a second demo on the same Redis is a new day
    for i in range(8):  # the gateway times out twice on two of them: they succeed on the third attempt
        args = [f"order-{1001 + i}", 1999 + 500 * i, "4242-4242-4242-4242", 2 if i in (3, 5) else 0]
        plan.handles.append(app.enqueue(name, args, key=f"charge-{run}-order-{1001 + i}"))
    # The customer double-clicked "pay": the same idempotency key returns the first charge.
    again = app.enqueue(name, ["order-1001", 1999, "4242-4242-4242-4242", 0], key=f"charge-{run}-order-1001")
    plan.duplicate = (plan.handles[-8].id, again.id)
    # The gateway never answers for this one: 3 attempts, then the dead-letter set.
    doomed = app.enqueue(name, ["order-1099", 4999, "4000-0000-0000-0119", 99])
    plan.doomed = doomed.id
    plan.handles.append(doomed)


# -- following -----------------------------------------------------------------------


def _follow(
    app: App, plan: Plan, procs: list[subprocess.Popen[bytes]], directory: Path, quiet: bool
) -> dict[str, TaskInfo]:
    """Poll until every task is final, with a live per-queue progress bar on a terminal."""
    ids = [h.id for h in plan.handles]
    final: dict[str, TaskInfo] = {}
    live = not quiet and out.is_terminal()
    progress = _progress() if live else None
    bars: dict[str, Any] = {}
    if progress is not None:
        progress.start()
        for queue in sorted({i.rpartition(".")[0] for i in ids}):
            total = sum(1 for i in ids if i.startswith(queue + "."))
            bars[queue] = progress.add_task(queue, total=total, ok=0, retried=0, failed=0, waiting="")
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(final) < len(ids):
            _check_alive(procs, directory)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(final)} of {len(ids)} tasks finished within {TIMEOUT:.0f} s")
            scheduled = _poll(app, ids, final)
            if progress is not None:
                _update(progress, bars, final, scheduled)
            time.sleep(0.1)
    finally:
        if progress is not None:
            progress.stop()
    return final


def _poll(app: App, ids: list[str], final: dict[str, TaskInfo]) -> dict[str, int]:
    """Record newly final tasks; return how many are still scheduled, per queue."""
    scheduled: dict[str, int] = {}
    for task_id in ids:
        if task_id in final:
            continue
        info = app.info(task_id)
        if info is None:
            continue
        if info.status.final:
            final[task_id] = info
        elif info.status is Status.SCHEDULED:
            scheduled[info.queue] = scheduled.get(info.queue, 0) + 1
    return scheduled


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(bar_width=36),
        MofNCompleteColumn(),
        TextColumn("[green]✓ {task.fields[ok]}[/] [yellow]↻ {task.fields[retried]}[/] [red]✗ {task.fields[failed]}[/]"),
        TextColumn("[blue]{task.fields[waiting]}"),
        TimeElapsedColumn(),
        console=out.console(),
    )


def _update(progress: Any, bars: dict[str, Any], final: dict[str, TaskInfo], scheduled: dict[str, int]) -> None:
    for queue, bar in bars.items():
        done = [i for i in final.values() if i.queue == queue]
        progress.update(
            bar,
            completed=len(done),
            ok=sum(1 for i in done if i.status is Status.SUCCEEDED),
            retried=sum(_retries(i) for i in done),
            failed=sum(1 for i in done if i.status is Status.FAILED),
            waiting=f"{scheduled[queue]} scheduled" if scheduled.get(queue) else "",
        )


# -- the report ----------------------------------------------------------------------


def summarise(app: App, plan: Plan, infos: dict[str, TaskInfo], elapsed: float) -> dict[str, Any]:
    """The demo's outcome as plain data: the JSON output, and what :func:`show` prints."""
    stats = app.stats()
    by_task: dict[str, dict[str, Any]] = {}
    for info in infos.values():
        row = by_task.setdefault(info.name, {"queue": info.queue, "tasks": 0, "succeeded": 0, "retried": 0,
                                             "failed": 0, "run": []})  # fmt: skip
        row["tasks"] += 1
        row["succeeded" if info.status is Status.SUCCEEDED else "failed"] += 1
        row["retried"] += _retries(info)
        if info.started_at and info.finished_at:
            row["run"].append((info.finished_at - info.started_at).total_seconds())
    for row in by_task.values():
        row["run"] = vars(Percentiles.of(row.pop("run")))
    checks = _checks(plan, infos)
    failed = [i for i in infos.values() if i.status is not Status.SUCCEEDED]
    return {
        "ok": all(checks.values()) and [i.id for i in failed] == [plan.doomed],
        "elapsed": round(elapsed, 3),
        "tasks": len(infos),
        "throughput": round(len(infos) / elapsed, 1) if elapsed else None,
        "by_task": by_task,
        "counters": stats.counters,
        "wait": vars(stats.wait),
        "run": vars(stats.run),
        "checks": checks,
        "dead_letter": [{"id": i.id, "name": i.name, "attempts": i.attempts, "error": i.error} for i in failed],
    }


def _retries(info: TaskInfo) -> int:
    """Retries, as the broker's ``retried`` counter counts them: every attempt after the first."""
    return max(info.attempts - 1, 0)


def _checks(plan: Plan, infos: dict[str, TaskInfo]) -> dict[str, bool]:
    urgent = _started(infos[plan.urgent])
    after = sum(1 for i in plan.newsletter if _started(infos[i]) > urgent)
    delays_kept = all(
        info.started_at is not None
        and info.enqueued_at is not None
        and (info.started_at - info.enqueued_at).total_seconds() >= plan.delayed[task_id] - 0.01
        for task_id, info in ((t, infos[t]) for t in plan.delayed)
    )
    return {
        "priority": after >= len(plan.newsletter) // 2,
        "delay": delays_kept,
        "idempotency": plan.duplicate[0] == plan.duplicate[1],
        "retries": all(infos[h.id].status is Status.SUCCEEDED for h in plan.handles if h.id != plan.doomed),
        "dead_letter": infos[plan.doomed].status is Status.FAILED and infos[plan.doomed].attempts == 3,
    }


def _started(info: TaskInfo) -> float:
    return info.started_at.timestamp() if info.started_at else float("inf")


def show(report: dict[str, Any], kept: Path | None) -> None:
    rows: list[tuple[Any, ...]] = []
    for name, row in sorted(report["by_task"].items()):
        run = row["run"]
        rows.append((KINDS.get(name, name), row["queue"], row["tasks"], row["succeeded"], row["retried"],
                     row["failed"], out.seconds(run["p50"]), out.seconds(run["p95"])))  # fmt: skip
    total = [sum(int(r[i]) for r in rows) for i in range(2, 6)]
    columns = ("task", "queue", "tasks", "succeeded", "retries", "failed", "run p50", "run p95")
    out.table(columns, rows, title="Results", status_column=None, footer=("total", "", *total, "", ""))
    wait, run, counters = report["wait"], report["run"], report["counters"]
    metrics = [
        ("wait (ready → started)", *(out.seconds(wait[q]) for q in ("p50", "p95", "p99"))),
        ("run (started → finished)", *(out.seconds(run[q]) for q in ("p50", "p95", "p99"))),
    ]
    out.table(("latency", "p50", "p95", "p99"), metrics, title="Metrics", status_column=None)
    out.line(
        f"{report['tasks']} tasks in {report['elapsed']:.1f} s = {report['throughput']} tasks/s;  "
        f"succeeded {counters.get('succeeded', 0)} · retries {counters.get('retried', 0)} · "
        f"failed {counters.get('failed', 0)}",
        "bold",
    )
    _show_checks(report, kept)


def _show_checks(report: dict[str, Any], kept: Path | None) -> None:
    checks = report["checks"]
    notes = {
        "priority": "the priority-10 password reset overtook the 80-e-mail newsletter enqueued before it",
        "delay": "delayed reports (3 s, 6 s) did not start before their time",
        "idempotency": "a double-clicked payment (same key) returned the first task: charged once",
        "retries": "flaky e-mails and payments succeeded on retry",
        "dead_letter": "the charge whose gateway never answered is in the dead-letter set after 3 attempts",
    }
    for name, note in notes.items():
        out.line(f"{'✓' if checks[name] else '✗'} {note}", "green" if checks[name] else "bold red")
    for dead in report["dead_letter"]:
        error = dead["error"] or {}
        out.line(f"  dead letter: {dead['id']}  {error.get('type')}: {error.get('message')}", "red")
    if kept is not None:
        out.line(f"kept {kept}: try  runq list failed --url sqlite:///{kept / 'demo.db'}", "dim")
