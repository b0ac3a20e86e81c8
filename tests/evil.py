"""Importing this module leaves a mark (the file named by RUNQ_TEST_IMPORT_MARKER): test_security
checks that a message naming ``tests.evil.run`` never makes a worker import it."""

from __future__ import annotations

import os
from pathlib import Path

Path(os.environ["RUNQ_TEST_IMPORT_MARKER"]).write_text("imported")


def run(*args: object) -> str:
    return "ran"
