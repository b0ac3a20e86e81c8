"""The APP that ``manage.py runq_worker`` / ``runq_beat`` hand to runq: ``runq.contrib.django.project:app``.

A process-pool child is a new interpreter (``python -m runq.child APP``): importing this
module sets Django up in it, from the ``DJANGO_SETTINGS_MODULE`` it inherits from the worker,
which imports every ``tasks.py`` before the child runs a task. Under ``manage.py`` Django is
already set up and this only names the App.
"""

from __future__ import annotations

import django
from django.apps import apps

from runq.contrib.django import get_app

if not apps.ready:
    django.setup()

app = get_app()
