"""A minimal Django project for tests/test_django.py.

``TESTPROJ_DATA`` names a private directory (the test makes one) for the project's SQLite
database and runq's SQLite broker, so the test process, ``manage.py runq_worker`` and its
children all use the same two files. The test database IS that file (``TEST.NAME``), so a
worker sees the rows a test commits.
"""

import os
from pathlib import Path

DATA = Path(os.environ.get("TESTPROJ_DATA", Path(__file__).resolve().parent.parent))

SECRET_KEY = "test-only"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",  # an app without tasks.py: autodiscovery must skip it
    "runq.contrib.django",
    "shop",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA / "app.sqlite3",
        "TEST": {"NAME": DATA / "app.sqlite3"},
        "OPTIONS": {"timeout": 30},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
RUNQ = {"url": f"sqlite:///{DATA / 'runq.db'}", "result_ttl": 3600, "lease": 10}
