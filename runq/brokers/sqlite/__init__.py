"""The embedded default broker: one SQLite file (``sqlite:///path``).

broker.py    claims, settles, leases, waits, inspection (WAL, ``BEGIN IMMEDIATE``)
flow.py      dependencies, expiry, concurrency slots, debounce, pause, ticks, rate limits,
             breakers, in the caller's transaction
inspect.py   stats and list filters
schema.sql   the tables and indexes
"""

from runq.brokers.sqlite.broker import CLEANUP_BATCH, SQLiteBroker, sqlite_path

__all__ = ["CLEANUP_BATCH", "SQLiteBroker", "sqlite_path"]
