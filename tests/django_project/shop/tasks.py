"""Found by autodiscovery: nothing imports this module by name."""

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
