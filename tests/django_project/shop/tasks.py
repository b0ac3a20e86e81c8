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
