"""A Celery tasks module, written the way Celery's documentation teaches, for tests/test_celery.py.

Only the import lines differ from Celery code (``celery`` → ``runq.contrib.celery``); the worker
is ``runq worker tests.celery_tasks:app``. The broker comes from ``CELERY_BROKER_URL``, as Celery
reads it; the test points the app elsewhere with ``app.conf.broker_url``.
"""

import time
from pathlib import Path

from runq.contrib.celery import Celery, shared_task
from runq.contrib.celery.exceptions import SoftTimeLimitExceeded
from runq.contrib.celery.result import AsyncResult
from runq.contrib.celery.utils.log import get_task_logger

app = Celery("proj")
app.conf.update(
    result_expires=3600,
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_routes={"tests.celery_tasks.refresh_feed": {"queue": "feeds"}},
)

logger = get_task_logger(__name__)


@app.task
def add(x, y):
    return x + y


@shared_task
def mul(x, y):
    return x * y


@app.task(bind=True, max_retries=3, default_retry_delay=0.1)
def fetch(self, url, fails):
    """Fails ``fails`` times, then succeeds: a flaky service, retried by the task itself."""
    try:
        if self.request.retries < fails:
            raise ConnectionError(f"{url} is down")
        return {"url": url, "retries": self.request.retries, "id": self.request.id}
    except ConnectionError as exc:
        logger.warning("retrying %s", url)
        raise self.retry(exc=exc, countdown=0.05)  # noqa: B904 - the idiom of Celery's docs


@app.task(bind=True, max_retries=2)
def always_down(self):
    try:
        raise ConnectionError("still down")
    except ConnectionError as exc:
        raise self.retry(exc=exc, countdown=0.05)  # noqa: B904 - the idiom of Celery's docs


@app.task(
    autoretry_for=(ConnectionError,),
    retry_backoff=0.2,
    retry_backoff_max=10,
    retry_jitter=False,
    retry_kwargs={"max_retries": 5},
)
def sync_inventory(log_path, fails):
    """Writes the time of each attempt; fails ``fails`` times (autoretry_for with back-off retries it)."""
    log = Path(log_path)
    with log.open("a") as out:
        out.write(f"{time.time()}\n")
    if len(log.read_text().splitlines()) <= fails:
        raise ConnectionError("inventory service unavailable")
    return "synced"


@app.task(queue="hipri", rate_limit="100/s", acks_late=True, ignore_result=False)
def urgent(x):
    return x


@app.task
def refresh_feed(name):
    return f"refreshed {name}"


@app.task(bind=True)
def whoami(self):
    return {"id": self.request.id, "retries": self.request.retries, "queue": self.request.delivery_info["routing_key"]}


@app.task
def broken():
    raise KeyError("missing")


@app.task(time_limit=1)
def too_slow():
    time.sleep(30)


@app.task
def crunch(seconds):
    """Cleans up when its soft time limit is reached (given at the call: apply_async(soft_time_limit=...))."""
    try:
        time.sleep(seconds)
        return "done"
    except SoftTimeLimitExceeded:
        return "cleaned up"


@app.task(soft_time_limit=0.5, time_limit=30)
def ignores_its_soft_limit():
    time.sleep(30)


@app.task
def waits_inside():
    return add.delay(1, 1).get(timeout=5)


@app.task
def lookup(task_id):
    return AsyncResult(task_id).state
