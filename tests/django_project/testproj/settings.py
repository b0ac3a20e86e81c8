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
    "django_tasks",  # the backport of Django 6's django.tasks (Django 6.0 needs no app)
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
# TESTPROJ_RUNQ_URL: the Redis of tests/test_django_tasks.py's Redis runs.
RUNQ = {"url": os.environ.get("TESTPROJ_RUNQ_URL", f"sqlite:///{DATA / 'runq.db'}"), "result_ttl": 3600, "lease": 10}
# Django's Tasks framework on runq: "on_commit" sends a task when the transaction commits.
TASKS = {
    "default": {
        "BACKEND": "runq.contrib.django.RunqBackend",
        "QUEUES": ["default", "mail", "prio"],
        "OPTIONS": {"timeout": 60},
    },
    "on_commit": {"BACKEND": "runq.contrib.django.RunqBackend", "QUEUES": [], "ENQUEUE_ON_COMMIT": True},
}
