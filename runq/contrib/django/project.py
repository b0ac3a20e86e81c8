"""The APP that ``manage.py runq_worker`` / ``runq_beat`` hand to runq: ``runq.contrib.django.project:app``.

A process-pool child is a new interpreter (``python -m runq.worker.child APP``): importing this
module sets Django up in it, from the ``DJANGO_SETTINGS_MODULE`` it inherits from the worker,
which imports every ``tasks.py`` before the child runs a task. Under ``manage.py`` Django is
already set up. Either way the tasks run here release stale database connections around each
run (:func:`release_connections`): only in a worker, never in the web processes.
"""

from __future__ import annotations

import django
from django.apps import apps

from runq.contrib.django import get_app, release_connections

if not apps.ready:
    django.setup()

app = get_app()
release_connections(app)
