"""The process pool's wire: length-prefixed JSON frames over a private pipe pair.

A private pipe (never the child's stdout) means a task's own prints cannot corrupt the
protocol; JSON (never pickle) means a child can only ever send data. A read ends in one
of three typed ways: a :class:`Frame`, a :class:`Timeout` or :class:`Eof`.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from dataclasses import dataclass
from typing import Any, TypeAlias

_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class Frame:
    data: dict[str, Any]


@dataclass(frozen=True)
class Timeout:
    """Nothing arrived within the read's timeout: the job overran it."""


@dataclass(frozen=True)
class Eof:
    """The other end closed the pipe: the process died (or exited)."""


Read: TypeAlias = Frame | Timeout | Eof


def write_frame(fd: int, data: dict[str, Any]) -> None:
    body = json.dumps(data, separators=(",", ":")).encode()
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self, timeout: float | None = None) -> Read:
        """The next frame, waiting at most ``timeout`` seconds (``None``: for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self._buffer) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= _HEADER.size + size:
                    body = bytes(self._buffer[_HEADER.size : _HEADER.size + size])
                    del self._buffer[: _HEADER.size + size]
                    return Frame(json.loads(body))
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                    return Timeout()
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return Eof()
            if not chunk:
                return Eof()
            self._buffer += chunk
