"""End-to-end on the embedded SQLite default: start a worker, enqueue, read results.

Run it from this directory: ``python quickstart.py`` (``make demo`` does).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tasks import add, app, resize, send_email

import runq


def main() -> int:
    worker = subprocess.Popen(
        [sys.executable, "-m", "runq", "worker", "tasks:app", "--queues", "default,emails", "--concurrency", "2"]
    )
    try:
        started = time.perf_counter()
        print("add(2, 3) =", add.delay(2, 3).result(timeout=30))
        emails = [send_email.delay(f"user{i}@example.com", subject="hello") for i in range(5)]
        urgent = add.options(priority=9).delay(40, 2)
        image = resize.delay("cat.png", width=128)
        batch = app.enqueue_many([add.s(i, i) for i in range(100)])
        first = send_email.options(key="welcome-42").delay("new@example.com", subject="welcome")
        duplicate = send_email.options(key="welcome-42").delay("new@example.com", subject="welcome")
        print("urgent:", urgent.result(timeout=30))
        print("image:", image.result(timeout=30))
        print("emails:", [h.result(timeout=60) for h in emails])
        print("batch of 100, sum:", sum(h.result(timeout=60) for h in batch))
        print("idempotent duplicate returned the first task:", duplicate.id == first.id)
        try:  # an App that registers tasks refuses a name it lacks, suggesting close ones
            app.enqueue("send_email", args=["x@y.z"])
        except ValueError as exc:
            print("unknown name ->", exc)
        bare = runq.App(app.settings.url)  # registers no task: it sends any name, the worker decides
        try:
            bare.enqueue("tasks.no_such_task").result(timeout=30)
        except runq.TaskFailed as exc:
            print("unknown task ->", exc.type)
        finally:
            bare.close()
        print(f"done in {time.perf_counter() - started:.2f}s")
        stats = app.stats()
        print("counters:", stats.counters)
        return 0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
