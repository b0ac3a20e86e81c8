"""The test project with a RUNQ setting runq refuses: Django must not start."""

from testproj.settings import *  # noqa: F403

RUNQ = {"url": "sqlite:///unused.db", "pool": "fibers"}
