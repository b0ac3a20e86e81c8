"""The worker runtime.

    loop.py      the Worker: claimer, settler and keeper threads around one in-flight table
    pools/       where a job runs: child processes (default), threads, or coroutines
    run.py       running one job, the same algorithm in every pool
    child.py     a process-pool child; frames.py its JSON wire
    ended.py     how a claim ended: one frozen value per case
    policy.py    what an end means (retry, fail, succeed, release): the one decide()

A claim's path: loop claims it → policy admits it → a pool runs it (run.py) → the pool
reports an Ended → policy.decide makes the Outcome → loop settles it with the broker.
"""

from runq.worker.loop import Worker

__all__ = ["Worker"]
