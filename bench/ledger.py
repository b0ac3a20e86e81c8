"""The soak's ledger: what really ran, written by the tasks themselves, never read from the
broker under test; and what it says about duplicates and concurrency limits.

Each process appends JSON lines to ``<dir>/<pid>.jsonl``, one ``os.write`` per line on an
``O_APPEND`` descriptor, so a line is whole or absent even when the process is SIGKILLed
mid-task. Events: ``start`` and ``end`` of a task body (written by the body), and, from a
middleware's ``on_finish`` in the worker, ``settled`` once the broker accepted the attempt's
outcome, or ``stopped`` when the worker found the claim gone and dropped the run's outcome.

The worker's own log adds one more fact: each outcome the broker refused ("late outcome
rejected": the claim had been taken over), by task id and worker.

A **duplicate** is a task body that ran to its end more than once. Each one is put down to
why the earlier run's outcome never counted (:func:`analyse`):

* ``finished, unsettled at SIGKILL``: the run ended, its worker was killed before settling
  it; after the lease expired another worker ran it again. The one source a worker's settings
  bound (``settle_batch``, ``settle_interval``).
* ``SIGSTOP: finished before it`` / ``running at it`` / ``started after SIGCONT``: the worker
  was frozen past its lease, the task was taken over, and the frozen worker's outcome was
  refused (the fencing token) or never sent; but its body ran.
* ``lease lost, no fault``: the earlier run's worker was neither killed nor stopped, and its
  outcome was refused: its lease expired anyway (renewals late on an overloaded machine).
  Not expected: each one is listed.
* ``settled, yet ran again``: the broker accepted an outcome and the task still ran again.
  A bug, always; so is ``unexplained``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LEDGER_ENV = "RUNQ_SOAK_LEDGER"  # the directory; unset: the tasks write nothing (throughput runs)

_fds: dict[int, int] = {}  # pid -> descriptor (a process-pool child opens its own)
_lock = threading.Lock()


def note(event: str, task_id: str, attempt: int, key: str | None = None, probe: bool = False) -> None:
    """Append one event for this process (a no-op without ``RUNQ_SOAK_LEDGER``)."""
    directory = os.environ.get(LEDGER_ENV)
    if not directory:
        return
    pid = os.getpid()
    fd = _fds.get(pid)
    if fd is None:
        with _lock:
            fd = _fds.get(pid)
            if fd is None:
                fd = _fds[pid] = os.open(f"{directory}/{pid}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    record: dict[str, Any] = {"e": event, "id": task_id, "a": attempt, "t": time.time(), "pid": pid, "pp": os.getppid()}
    if key is not None:
        record["k"] = key
    if probe:
        record["p"] = 1
    os.write(fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())


# -- reading -------------------------------------------------------------------------------


@dataclass
class Run:
    """One attempt of one task that started, as the ledger tells it."""

    id: str
    attempt: int
    worker: int  # the worker process's pid (a process-pool child's parent)
    start: float
    end: float | None = None
    settled: bool = False
    refused: bool = False  # its outcome was refused, or dropped: the claim had been taken over
    key: str | None = None
    probe: bool = False


@dataclass(frozen=True)
class Fault:
    """What the soak did to a worker: ``kill`` at ``at``; ``stop`` from ``at`` to ``until``."""

    worker: int
    kind: Literal["kill", "stop"]
    at: float
    until: float


REFUSED = re.compile(r"late outcome rejected.* task_id=(\S+) .*worker=\S*?:(\d+):\w+")


def refusals(logs: Iterable[Path]) -> set[tuple[str, int]]:
    """(task id, worker pid) of every outcome a worker logged as refused by the broker."""
    found = set()
    for path in logs:
        for match in REFUSED.finditer(path.read_text(errors="replace")):
            found.add((match[1], int(match[2])))
    return found


def read(
    directory: Path,
    workers: Iterable[int],
    refused: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
) -> tuple[dict[str, list[Run]], list[str]]:
    """Every run by task id (in claim order: by attempt), and what the ledger shows that cannot be."""
    known = set(workers)
    runs: dict[tuple[str, int], Run] = {}
    settled: set[tuple[str, int]] = set()
    stopped: set[tuple[str, int]] = set()
    anomalies: list[str] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            task = (event["id"], event["a"])
            if event["e"] in ("settled", "stopped"):
                (settled if event["e"] == "settled" else stopped).add(task)
                continue
            worker = event["pid"] if event["pid"] in known else event["pp"]
            if event["e"] == "start":
                if task in runs:
                    anomalies.append(f"attempt {task[1]} of {task[0]} started twice")
                runs[task] = Run(task[0], task[1], worker, event["t"], key=event.get("k"), probe="p" in event)
            elif task in runs:
                runs[task].end = event["t"]
            else:
                anomalies.append(f"attempt {task[1]} of {task[0]} ended without a start")
    by_task: dict[str, list[Run]] = defaultdict(list)
    for task, run in runs.items():
        run.settled = task in settled
        run.refused = (run.id, run.worker) in refused or task in stopped
        by_task[run.id].append(run)
    for task_runs in by_task.values():
        task_runs.sort(key=lambda run: run.attempt)
    return dict(by_task), anomalies


# -- duplicates ----------------------------------------------------------------------------


@dataclass
class Analysis:
    tasks: int
    lost: list[str]  # enqueued, never ran to its end
    not_succeeded: list[str]  # its final record is not `succeeded`
    duplicates: int  # runs to the end beyond the first, over all tasks
    causes: Counter[str] = field(default_factory=Counter)
    interrupted: Counter[str] = field(default_factory=Counter)  # started, never ended: why
    unstarted_claims: int = 0  # claims a worker took and never started (attempts the ledger lacks)
    by_kill: dict[int, int] = field(default_factory=dict)  # killed worker -> duplicates it left
    unsettled_at_kill: dict[int, int] = field(default_factory=dict)  # killed worker -> runs ended, unsettled
    examples: list[str] = field(default_factory=list)  # unexpected cases, a few of each
    anomalies: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return len(self.unsettled_at_kill)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "lost": len(self.lost),
            "not_succeeded": len(self.not_succeeded),
            "duplicates": self.duplicates,
            "causes": dict(self.causes),
            "interrupted": dict(self.interrupted),
            "unstarted_claims": self.unstarted_claims,
            "kills": self.kills,
            "most_duplicates_from_one_kill": max(self.by_kill.values(), default=0),
            "duplicates_by_kill": {str(worker): n for worker, n in self.by_kill.items() if n},  # worker pid -> n
            "most_unsettled_at_one_kill": max(self.unsettled_at_kill.values(), default=0),
            "examples": self.examples[:20],
            "anomalies": self.anomalies[:20],
        }


def analyse(
    ids: Iterable[str],
    runs: Mapping[str, list[Run]],
    faults: list[Fault],
    statuses: Mapping[str, tuple[str, int]] | None,  # id -> (final status, attempts); None: not known
    lease: float,
    anomalies: list[str] | None = None,
) -> Analysis:
    """Every enqueued task checked against the ledger and the faults: lost, duplicated and why."""
    kills = {fault.worker: fault for fault in faults if fault.kind == "kill"}
    stops: dict[int, list[Fault]] = defaultdict(list)
    for fault in faults:
        if fault.kind == "stop":
            stops[fault.worker].append(fault)
    ids = list(ids)
    found = Analysis(len(ids), [], [], 0, anomalies=list(anomalies or []))
    found.by_kill = {worker: 0 for worker in kills}
    found.unsettled_at_kill = {worker: 0 for worker in kills}
    for task_id in ids:
        task_runs = [run for run in runs.get(task_id, []) if not run.probe]
        completed = [run for run in task_runs if run.end is not None]
        if not completed:
            found.lost.append(task_id)
        if statuses is not None:  # the long soak's records expired: the caller checks the counters
            status, attempts = statuses.get(task_id, ("missing", 0))
            if status != "succeeded":
                found.not_succeeded.append(f"{task_id}: {status}")
            found.unstarted_claims += max(0, attempts - len(task_runs))
        for run in task_runs:
            if run.end is None:
                killed = kills.get(run.worker)
                found.interrupted["by SIGKILL" if killed and killed.at >= run.start else "unexplained"] += 1
            elif not run.settled and not run.refused and run.worker in kills:
                found.unsettled_at_kill[run.worker] += 1
        for earlier, later in itertools.pairwise(completed):
            found.duplicates += 1
            cause = _why(earlier, later, kills.get(earlier.worker), stops.get(earlier.worker, []), lease)
            found.causes[cause] += 1
            if cause == "finished, unsettled at SIGKILL":
                found.by_kill[earlier.worker] += 1
            elif cause in ("lease lost, no fault", "settled, yet ran again", "unexplained"):
                found.examples.append(f"{cause}: {task_id} attempts {earlier.attempt} and {later.attempt}")
    return found


def _why(earlier: Run, later: Run, kill: Fault | None, stops: list[Fault], lease: float) -> str:
    """Why ``earlier`` (a run to its end) did not count, so that ``later`` ran too."""
    assert earlier.end is not None
    if earlier.settled:
        return "settled, yet ran again"
    # A stop explains it when it began before the takeover and ended after the run's claim (a
    # claim taken ahead may wait through the stop; once thawed, it starts within a lease).
    for stop in stops:
        if stop.at <= later.start and stop.until >= earlier.start - lease:
            if earlier.end < stop.at:
                return "SIGSTOP: finished before it"
            if earlier.start < stop.at:
                return "SIGSTOP: running at it"
            return "SIGSTOP: started after SIGCONT"
    if earlier.refused:
        return "lease lost, no fault"
    if kill is not None and kill.at <= later.start:
        return "finished, unsettled at SIGKILL"
    return "unexplained"


# -- concurrency limits --------------------------------------------------------------------


def peak_overlap(runs: Iterable[Run], faults: list[Fault], exclude_stopped: bool = True) -> tuple[dict[str, int], int]:
    """The most runs of each key inside their body at once (an end before a start at a tie).

    A run cut by its worker's SIGKILL ends at the kill. A run whose worker was frozen (SIGSTOP)
    while it held its seat is left out (counted in the second value): the broker frees a frozen
    worker's seat at lease expiry, and the run goes on beside its successor when it thaws."""
    kills = {fault.worker: fault.at for fault in faults if fault.kind == "kill"}
    stops: dict[int, list[Fault]] = defaultdict(list)
    for fault in faults:
        if fault.kind == "stop":
            stops[fault.worker].append(fault)
    edges: list[tuple[float, int, str]] = []
    skipped = 0
    for run in runs:
        if run.key is None:
            continue
        end = run.end if run.end is not None else kills.get(run.worker, float("inf"))
        if exclude_stopped and any(stop.at <= end and stop.until >= run.start for stop in stops.get(run.worker, [])):
            skipped += 1
            continue
        edges.append((run.start, 1, run.key))
        edges.append((end, -1, run.key))
    running: Counter[str] = Counter()
    peak: dict[str, int] = {}
    for _, step, key in sorted(edges, key=lambda edge: (edge[0], edge[1])):
        running[key] += step
        peak[key] = max(peak.get(key, 0), running[key])
    return peak, skipped
