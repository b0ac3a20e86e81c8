"""Celery's task states (``from celery import states``), as :class:`~runq.contrib.celery.AsyncResult` reports them."""

from __future__ import annotations

PENDING = "PENDING"  # runq: pending, scheduled (first attempt), waiting, or an id it does not know
STARTED = "STARTED"  # runq: running
RETRY = "RETRY"  # runq: scheduled again after a failed attempt
SUCCESS = "SUCCESS"  # runq: succeeded
FAILURE = "FAILURE"  # runq: failed
REVOKED = "REVOKED"  # runq: cancelled

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, STARTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
ALL_STATES = READY_STATES | UNREADY_STATES
