"""The web dashboard: an HTTP API, Prometheus metrics and a live page over one runq App.

Install with ``pip install 'runq[dashboard]'``; run with ``runq dashboard APP``, or mount
its JSON API in your own FastAPI app with :func:`api_app`.
"""

from __future__ import annotations

from runq.dashboard.mount import api_app
from runq.dashboard.server import check_bind, create_app, listen, serve

__all__ = ["api_app", "check_bind", "create_app", "listen", "serve"]
