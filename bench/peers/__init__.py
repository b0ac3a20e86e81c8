"""One adapter module per library, each with the same interface (:class:`bench.peers.base.Peer`).

An adapter module defines the library's benchmark tasks at import (its worker imports the
same module) from ``BENCH_REDIS_URL``, and a ``PEER`` object the harness drives.
"""

NAMES = ["runq", "celery", "rq", "dramatiq", "huey", "arq", "taskiq", "saq"]
