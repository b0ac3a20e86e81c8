"""A process-pool child: ``python -m runq.child APP READ_FD WRITE_FD PARENT_PID``.

Its first frame is the worker's settings, which the app adopts (so a task that
enqueues a task uses the worker's broker, whatever the environment says); then it
runs jobs one at a time, as they come in batches (``{"jobs": [...]}``), answering each
as it ends, talking to its worker over a private pipe pair in
length-prefixed JSON frames (never pickle), so a task's own prints on stdout
cannot corrupt the protocol. It dies with its parent: on Linux the kernel sends it SIGKILL when the worker exits
(``PR_SET_PDEATHSIG``); elsewhere it exits at EOF on its pipe.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import struct
import sys
import time
from dataclasses import asdict
from typing import Any

_HEADER = struct.Struct(">I")
_PR_SET_PDEATHSIG = 1


def write_frame(fd: int, data: dict[str, Any]) -> None:
    body = json.dumps(data, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next frame; ``None`` when ``timeout`` passes first; ``{}`` at EOF."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= _HEADER.size + size:
                    body = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
                    del self._buffer[: _HEADER.size + size]
                    frame: dict[str, Any] = json.loads(body)
                    return frame
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                    return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return {}
            self._buffer += chunk


def job_to_dict(job: Any) -> dict[str, Any]:
    return asdict(job)


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
    from runq.runner import Job, run_job
    from runq.settings import Settings

    reader = FrameReader(read_fd)
    settings = reader.read()
    if not settings:
        return 0  # the worker went away before it said anything
    app = load_app(app_path)
    app.configure(Settings.from_dict(settings))  # never the environment's: the worker's URL, always
    while frame := reader.read():
        for job in frame["jobs"]:  # a batch of short jobs, run back to back; each answered as it ends
            write_frame(write_fd, run_job(app, Job(**job)).to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
