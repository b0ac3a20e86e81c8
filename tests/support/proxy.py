"""A TCP proxy for faults on the wire: between runq and its broker, inside the test process.

    proxy = Proxy(("127.0.0.1", redis.port))   # listens on 127.0.0.1:proxy.port
    url = f"redis://127.0.0.1:{proxy.port}/0"   # workers and producers connect through it
    proxy.cut()                                 # reset every connection now
    proxy.chaos(request=0.01, reply=0.01)       # reset a connection instead of relaying a chunk
    proxy.cut_next(b"\r\nrunq_settle_")          # one shot: cut the reply to the next such request
    proxy.stall(); ...; proxy.resume()          # black-hole the traffic, then let it flow again
    proxy.close()

A cut closes both ends with a TCP reset (``SO_LINGER`` 0), as a dropped NAT entry or a
restarted load balancer does. ``chaos`` cuts *mid-call*: in the request direction the call
never reaches the server; in the reply direction the server did the work and the client
never hears of it (an acknowledged-but-unread reply). ``stall`` stops relaying bytes while
every connection stays open (the peers see silence, not an error; new connections are
accepted and wait too), as a partition or a stuck middlebox does; ``resume`` relays what
queued meanwhile. Nothing is ever reordered or altered.

One thread, one ``selectors`` loop; other threads only set flags and wake it.
"""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import struct
import threading
from dataclasses import dataclass


@dataclass
class Counts:
    """What the proxy did, for a test to report (and to check that faults really happened)."""

    connections: int = 0
    cuts: int = 0  # connections reset by cut() or chaos
    request_cuts: int = 0  # chaos cuts of a chunk on its way to the server
    reply_cuts: int = 0  # chaos cuts of a chunk on its way back to the client
    relayed: int = 0  # chunks relayed
    stalls: int = 0


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket
    doomed: bool = False  # a cut_next() request went through: cut its reply

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.server if sock is self.client else self.client


class Proxy:
    """Relays 127.0.0.1:``port`` to ``upstream``; faults on demand (module docstring)."""

    def __init__(self, upstream: tuple[str, int], seed: int | None = None) -> None:
        self.upstream = upstream
        self.counts = Counts()
        self._random = random.Random(seed)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._pairs: dict[socket.socket, _Pair] = {}
        self._lock = threading.Lock()
        self._cut_all = False
        self._stalled = False
        self._closing = False
        self._chances = (0.0, 0.0)
        self._next: tuple[bytes, bool] | None = None
        self.fired = threading.Event()  # set when the cut_next() cut happened
        self._thread = threading.Thread(target=self._loop, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults, from any thread -----------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection (the loop does it before relaying anything more)."""
        self._set(cut_all=True)

    def chaos(self, request: float = 0.0, reply: float = 0.0) -> None:
        """Each chunk on its way to the server (``request``) or back (``reply``) is, with that
        probability, not relayed: its connection is reset instead. 0 and 0 turn chaos off."""
        with self._lock:
            self._chances = (request, reply)

    def cut_next(self, contains: bytes, reply: bool = True) -> None:
        """One shot: the next request chunk holding ``contains`` (a command's name) is cut mid-call:
        with ``reply`` the server gets it and its reply is replaced by a reset (the work is done,
        the caller never hears); without, it is reset before the server sees it. ``fired`` is set."""
        with self._lock:
            self._next = (contains, reply)
            self.fired.clear()

    def stall(self) -> None:
        """Stop relaying; connections stay open and new ones are accepted but silent."""
        with self._lock:
            self.counts.stalls += not self._stalled
        self._set(stalled=True)

    def resume(self) -> None:
        self._set(stalled=False)

    def close(self) -> None:
        self._set(closing=True)
        self._thread.join(10)
        self._wake_w.close()

    def open_connections(self) -> int:
        with self._lock:
            return len({id(pair) for pair in self._pairs.values()})

    def _set(self, cut_all: bool = False, stalled: bool | None = None, closing: bool = False) -> None:
        with self._lock:
            self._cut_all |= cut_all
            self._closing |= closing
            if stalled is not None:
                self._stalled = stalled
        with contextlib.suppress(OSError):  # already closed: the loop has ended
            self._wake_w.send(b"x")

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    closing, cut_all, stalled = self._closing, self._cut_all, self._stalled
                    self._cut_all = False
                if closing:
                    return
                if cut_all:
                    for pair in list({id(p): p for p in self._pairs.values()}.values()):
                        self._drop(pair)
                self._watch(not stalled)
                for key, _ in self._selector.select(timeout=0.5):
                    sock = key.fileobj
                    if sock is self._wake_r:
                        self._wake_r.recv(4096)
                    elif sock is self._listener:
                        self._accept()
                    elif isinstance(sock, socket.socket) and sock in self._pairs:
                        self._relay(sock)
        finally:
            for pair in list({id(p): p for p in self._pairs.values()}.values()):
                self._drop(pair, count=False)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()

    def _watch(self, reading: bool) -> None:
        """Read from the connections only while not stalled (a stall leaves bytes where they are)."""
        for sock in self._pairs:
            want = selectors.EVENT_READ if reading else 0
            registered = sock in self._selector.get_map()
            if want and not registered:
                self._selector.register(sock, want)
            elif not want and registered:
                self._selector.unregister(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5)  # a relay's sendall must not hang the loop on a peer that stopped reading
        pair = _Pair(client, server)
        self._pairs[client] = self._pairs[server] = pair
        self.counts.connections += 1

    def _relay(self, sock: socket.socket) -> None:
        pair = self._pairs[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:  # one side closed: close the other (no half-open connections to reason about)
            self._drop(pair, count=False)
            return
        to_server = sock is pair.client
        if self._targeted(pair, to_server, data):
            return
        with self._lock:
            request, reply = self._chances
        if self._random.random() < (request if to_server else reply):
            if to_server:
                self.counts.request_cuts += 1
            else:
                self.counts.reply_cuts += 1
            self._drop(pair)
            return
        try:
            pair.peer(sock).sendall(data)
            self.counts.relayed += 1
        except OSError:
            self._drop(pair, count=False)

    def _targeted(self, pair: _Pair, to_server: bool, data: bytes) -> bool:
        """Whether cut_next() cut this chunk (its connection is gone then)."""
        if not to_server and pair.doomed:
            self.counts.reply_cuts += 1
            self.fired.set()  # before the reset: the caller's error must not outrun it
            self._drop(pair)
            return True
        with self._lock:
            armed = self._next
            if not to_server or armed is None or armed[0] not in data:
                return False
            self._next = None
        if armed[1]:
            pair.doomed = True  # relayed now; its reply is cut when it comes
            return False
        self.counts.request_cuts += 1
        self.fired.set()
        self._drop(pair)
        return True

    def _drop(self, pair: _Pair, count: bool = True) -> None:
        for sock in (pair.client, pair.server):
            if self._pairs.pop(sock, None) is not None and sock in self._selector.get_map():
                self._selector.unregister(sock)
            _reset(sock)
        if count:
            self.counts.cuts += 1


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, not a polite FIN: the peer learns at once, as from a real cut."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
