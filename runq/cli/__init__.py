"""The ``runq`` command.

commands.py    the group, shared options, and the task/queue/worker commands
serve.py       the long-running and show commands: dashboard, beat, demo, bench
console.py     rich tables on a terminal, plain columns in a pipe
demo.py        ``runq demo`` (tasks in demo_tasks.py); bench.py ``runq bench``
"""

from runq.cli import serve  # registers dashboard, beat, demo and bench on the group
from runq.cli.commands import main

__all__ = ["main", "serve"]
