"""``memory://``: an in-process broker with the semantics of every other (SPEC §12).

tables.py   the state: one Record per task, heaps as indexes, no I/O
flow.py     dependencies (``after``), ticks, rate limits, breakers (SQLite's rules)
broker.py   MemoryBroker: the Broker interface over them, one lock, a movable clock
"""

from runq.brokers.memory.broker import MemoryBroker, memory_options

__all__ = ["MemoryBroker", "memory_options"]
