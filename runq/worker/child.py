"""A process-pool child: ``python -m runq.worker.child APP READ_FD WRITE_FD PARENT_PID``.

Its first frame is the worker's settings, which the app adopts (so a task that
enqueues a task uses the worker's broker, whatever the environment says); then it
runs jobs one at a time, as they come in batches (``{"jobs": [...]}``), answering each
as it ends (:mod:`runq.worker.frames`). With ``max_memory_per_child``, the answer of the
task during which its memory peaked at the limit says ``"recycle"``, and the child runs no
more of its batch: the worker starts its replacement, then closes the pipe (EOF: exit 0).

It dies with its parent: on Linux the kernel sends it SIGKILL when the worker exits
(``PR_SET_PDEATHSIG``); elsewhere it exits at EOF on its pipe.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    app_path, read_fd, write_fd, parent_pid = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    _die_with_parent(parent_pid)
    # The worker decides when children stop; a Ctrl-C or a SIGTERM to the whole
    # process group must not kill a task in the middle of a graceful shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    from runq.app import load_app
    from runq.settings import Settings
    from runq.worker import soft
    from runq.worker.ended import to_frame
    from runq.worker.frames import Frame, FrameReader, write_frame
    from runq.worker.run import Job, run_job

    soft.use_signals()  # this main thread runs one task at a time: a soft timeout can be a signal
    reader = FrameReader(read_fd)
    settings = reader.read()
    if not isinstance(settings, Frame):
        return 0  # the worker went away before it said anything
    app = load_app(app_path)
    worker_settings = Settings.from_dict(settings.data)
    app.configure(worker_settings)  # never the environment's: the worker's URL, always
    limit = worker_settings.max_memory_per_child * 1024  # KiB, as ru_maxrss counts
    while isinstance(frame := reader.read(), Frame):
        for job in frame.data["jobs"]:  # a batch of short jobs, run back to back; each answered as it ends
            answer = to_frame(run_job(app, Job(**job)))
            if limit and _peak_kib() >= limit:
                write_frame(write_fd, {**answer, "recycle": True})
                break  # the rest of the batch goes back to the worker's queue
            write_frame(write_fd, answer)
    return 0


def _peak_kib() -> int:
    """This process's peak resident memory, KiB (one getrusage: only with a memory limit)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # macOS counts bytes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
