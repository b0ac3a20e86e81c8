"""The private PostgreSQL database of a ``python -m bench.postgres`` run, for its adapters."""

from __future__ import annotations

import os

ENV = "BENCH_PG_URL"


def postgres_url() -> str:
    """``postgresql://…/<private database>``; never a default (someone else's database is off limits)."""
    url = os.environ.get(ENV)
    if not url:
        raise RuntimeError(f"{ENV} is not set: run the benchmark through python -m bench.postgres")
    return url
