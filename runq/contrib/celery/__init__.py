"""A Celery migration facade: Celery code runs on runq with only its import lines changed.

    from celery import Celery, shared_task          →  from runq.contrib.celery import Celery, shared_task
    from celery.result import AsyncResult           →  from runq.contrib.celery.result import AsyncResult
    from celery.exceptions import ...               →  from runq.contrib.celery.exceptions import ...
    from celery.utils.log import get_task_logger    →  from runq.contrib.celery.utils.log import get_task_logger
    celery -A proj worker -Q a,b                    →  runq worker proj.celery:app --queues a,b

``Celery`` is a :class:`runq.App`; each task is a runq task that keeps Celery's retry rules
(only ``self.retry()`` and ``autoretry_for`` retry). What runq cannot do the Celery way raises
``NotImplementedError`` naming the runq way; the README's "Moving from Celery" maps each name.
"""

from runq.contrib.celery import states
from runq.contrib.celery.app import Celery, current_app, shared_task
from runq.contrib.celery.result import AsyncResult
from runq.contrib.celery.task import Task

__all__ = ["AsyncResult", "Celery", "Task", "current_app", "shared_task", "states"]
