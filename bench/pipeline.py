"""CPU per task of the worker's own Python, stage by stage, with no broker and one thread.

    .venv/bin/python -m bench.pipeline                 # 20,000 no-ops, best of 5 passes
    cd <other tree> && <this venv>/bin/python <this file>   # another checkout's runq (cwd first)

``bench.cost`` measures a real worker; its figures move 5-25 % between runs on a shared
machine, which hides a few microseconds. This runs the worker's per-task path in one
thread, 64 claims at a time as a worker does, against a broker stub that answers at once:
``Worker._entry`` (decode, policy), ``_start`` (the job), the run (``run_job``), ``_finished``
(the outcome), and ``_settle_batch`` (middleware, metrics, forgetting the claims). Its
figures repeat to ~0.3 µs. Thread hand-offs and the broker are not in it: see ``bench.cost``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.getcwd())  # the runq of the current directory (to compare checkouts)


class _Stub:
    """A broker that answers every call at once (settle: every outcome accepted)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    def settle(self, outcomes: list[Any]) -> list[bool]:
        return [True] * len(outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    os.environ["RUNQ_URL"] = f"sqlite:///{tempfile.mkdtemp()}/runq.db"
    logging.getLogger("runq").setLevel(logging.WARNING)
    from runq.brokers import connect
    from runq.models import Claim
    from tests.tasks import app, noop

    noop.delay()  # one real payload, as the producer writes it
    broker = connect(os.environ["RUNQ_URL"])
    (sample,) = broker.claim(("default",), "bench", 1, 30.0)
    broker.close()
    try:
        import runq.worker.loop as loop
        from runq.worker.run import run_job
    except ImportError:  # a checkout before issue 20 (5dc6793)
        from runq.runner import run_job  # type: ignore[no-redef]

        import runq.worker as loop  # type: ignore[no-redef]
    loop.connect = lambda url, timeout=None: _Stub()  # type: ignore[assignment,attr-defined]
    worker = loop.Worker(app, "tests.tasks:app", app.settings.with_(pool="thread", concurrency=8))
    clock, best, parts = time.process_time, float("inf"), [0.0] * 5
    for run in range(args.passes):
        claims = [Claim(f"{sample.id}-{run}-{i}", "default", sample.payload, 1, "t") for i in range(args.tasks)]
        spent = [0.0] * 5
        for start in range(0, args.tasks, 64):
            marks = [clock()]
            entries = [worker._entry(claim) for claim in claims[start : start + 64]]
            for entry in entries:
                worker._inflight[entry.claim.id] = entry
            marks.append(clock())
            jobs = [worker._start(entry) for entry in entries]
            marks.append(clock())
            ends = [run_job(app, job, job.context()) for job in jobs]
            marks.append(clock())
            for job, end in zip(jobs, ends, strict=True):
                worker._finished(job, end)
            marks.append(clock())
            batch = []
            while True:
                try:
                    batch.append(worker._outcomes.get_nowait())
                except queue.Empty:
                    break
            worker._settle_batch(batch)
            marks.append(clock())
            for i in range(5):
                spent[i] += marks[i + 1] - marks[i]
        if sum(spent) < best:
            best, parts = sum(spent), spent
    per = [part / args.tasks * 1e6 for part in parts]
    print(
        f"{best / args.tasks * 1e6:.2f} µs CPU per task (best of {args.passes}): entry {per[0]:.2f}, "
        f"start {per[1]:.2f}, run {per[2]:.2f}, finished {per[3]:.2f}, settle {per[4]:.2f}"
    )


if __name__ == "__main__":
    main()
