"""``manage.py runq_worker [runq worker's flags]``: a worker for the project's tasks."""

from __future__ import annotations

from runq.contrib.django.management import RunqCommand


class Command(RunqCommand):
    help = "Run a runq worker for this project's tasks (the flags of `runq worker`; see --help)."
    runq_command = "worker"
