"""``manage.py runq_beat [runq beat's flags]``: enqueue the project's periodic tasks at their ticks."""

from __future__ import annotations

from runq.contrib.django.management import RunqCommand


class Command(RunqCommand):
    help = "Enqueue this project's periodic tasks at their ticks (the flags of `runq beat`; see --help)."
    runq_command = "beat"
