"""``from celery.utils.log import get_task_logger``: a standard logger, which runq's log set-up formats."""

from __future__ import annotations

import logging

__all__ = ["get_task_logger"]


def get_task_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
