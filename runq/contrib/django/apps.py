"""The Django app config: once every app is loaded, imports the ``tasks.py`` modules and
builds the App, so a bad ``RUNQ`` setting fails at start."""

from __future__ import annotations

from django.apps import AppConfig


class RunqConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "runq.contrib.django"
    label = "runq"
    verbose_name = "runq"

    def ready(self) -> None:
        from runq.contrib.django import autodiscover, get_app

        autodiscover()
        get_app()
