"""The ``runq`` command.

group.py       the group, and what every command shares (options, settings, the App, errors)
commands.py    the commands about tasks: worker, enqueue, info, result, cancel, retry, list, purge
queues.py      the commands about the whole queue: status, metrics, workers
serve.py       dashboard, beat, demo, bench
console.py     rich tables on a terminal, plain columns in a pipe
demo.py        ``runq demo`` (its tasks: demo_tasks.py); bench.py ``runq bench``
"""

from runq.cli import commands, queues, serve  # each registers its commands on the group
from runq.cli.group import main

__all__ = ["commands", "main", "queues", "serve"]
