"""The Django app config: autodiscovers ``tasks.py`` modules once every app is loaded."""

from __future__ import annotations

from django.apps import AppConfig


class RunqConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "runq.contrib.django"
    label = "runq"
    verbose_name = "runq"

    def ready(self) -> None:
        from runq.contrib.django import autodiscover

        autodiscover()
