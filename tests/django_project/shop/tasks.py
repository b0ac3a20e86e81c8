"""Found by autodiscovery: nothing imports this module by name."""

from django.db import connection, transaction

from runq.contrib.django import app
from shop.models import Order


@app.task
def mark_paid(ref: str) -> str:
    """Reads the row the producer's transaction wrote: it must be committed by now."""
    order = Order.objects.get(ref=ref)
    order.status = "paid"
    order.save(update_fields=["status"])
    return order.status


@app.periodic(every=1)
def tick() -> str:
    return "tick"


@app.task
def fresh_connection() -> bool:
    """Whether this run found no database connection left open by an earlier one; then opens one."""
    fresh = connection.connection is None
    Order.objects.exists()
    return fresh


@app.task
def nested_in_transaction() -> bool:
    """Calls a task function inside an atomic block: the block's connection must survive it."""
    with transaction.atomic():
        Order.objects.exists()
        fresh_connection()
        return connection.in_atomic_block and not connection.needs_rollback


# -- tasks of Django's Tasks framework (TASKS = RunqBackend), written as Django's docs teach ----

import asyncio  # noqa: E402

from django_tasks import TaskContext, task  # noqa: E402  (Django >= 6.0: from django.tasks import ...)


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def double_later(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@task(queue_name="mail", takes_context=True)
def whoami(context: TaskContext, note: str) -> dict[str, object]:
    return {
        "id": context.task_result.id,
        "attempt": context.attempt,
        "status": context.task_result.status,
        "note": note,
    }


@task
def refuse(why: str) -> None:
    raise ValueError(why)


@task(queue_name="prio")
def record(ref: str) -> int:
    """Its row's primary key tells the order the worker ran these in."""
    return Order.objects.create(ref=ref).pk


@task(backend="on_commit")
def mark_paid_on_commit(ref: str) -> str:
    return mark_paid(ref)


@task(backend="on_commit", enqueue_on_commit=False)
def mark_paid_now(ref: str) -> str:
    return mark_paid(ref)
