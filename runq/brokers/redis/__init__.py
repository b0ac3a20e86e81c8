"""The Redis broker, one module per concern, no import cycle:

keys.py     every key name and the KEYS/ARGV layout of every function (the one definition)
scripts.py  the Functions library built from lua/*.lua with the generated prologues; FCALL
outbox.py   cross-slot workflow steps, ticks, rate limits, breakers
broker.py   RedisBroker: the Broker interface on top of them
"""

from runq.brokers.redis.broker import BATCH, RedisBroker
from runq.brokers.redis.keys import QueueKeys, done_key, function_keys, queue_keys

__all__ = ["BATCH", "QueueKeys", "RedisBroker", "done_key", "function_keys", "queue_keys"]
