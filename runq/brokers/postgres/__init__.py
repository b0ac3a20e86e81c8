"""The PostgreSQL broker (``postgresql://``; the ``postgres`` extra).

broker.py    claims, settles, leases, waits, ``using(conn)`` (enqueue in the app's transaction)
listen.py    the LISTEN/NOTIFY thread that wakes idle workers and result waits
flow.py      dependencies, ticks, rate limits, breakers
limits.py    expiry, concurrency slots, debounce, paused queues (SPEC §9)
produce.py   the INSERT of a batch; a message with a key, parents or a debounce
inspect.py   stats and list filters
setup.py     the URL, lazy connection, and the numbered migrations of schema.sql
"""

from runq.brokers.postgres.broker import CLEANUP_BATCH, PostgresBroker
from runq.brokers.postgres.setup import postgres_conninfo

__all__ = ["CLEANUP_BATCH", "PostgresBroker", "postgres_conninfo"]
