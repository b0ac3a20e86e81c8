"""``manage.py runq_worker`` and ``runq_beat``: runq's own commands on the project's App.

They hand their arguments, unchanged, to ``runq worker`` / ``runq beat`` (the same flags, the
same help, the same exit codes), so nothing about the worker is written twice.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, handle_default_options
from django.db import connections


class RunqCommand(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    runq_command = ""  # the `runq` subcommand this one runs

    def run_from_argv(self, argv: list[str]) -> None:
        """Django's own options (``--settings``, ``--pythonpath``…) are Django's; every other
        argument, ``--help`` included, goes to runq."""
        self._called_from_command_line = True
        parser = self.create_parser(argv[0], argv[1], add_help=False, allow_abbrev=False)
        options, rest = parser.parse_known_args(argv[2:])
        handle_default_options(options)
        try:
            self.execute(*rest, **vars(options))
        finally:
            connections.close_all()

    def handle(self, *args: str, **options: Any) -> None:
        from runq.cli import main
        from runq.contrib.django import APP_PATH

        _children_import_like_this_process()
        main([self.runq_command, APP_PATH, *args], prog_name="runq")


def _children_import_like_this_process() -> None:
    """Process-pool children are new interpreters: give them the directory ``manage.py`` runs
    from (``sys.path[0]``, or ``--pythonpath``), where the project's packages live, whatever
    their working directory. ``DJANGO_SETTINGS_MODULE`` they inherit as it is."""
    here = sys.path[0] or os.getcwd()
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])
