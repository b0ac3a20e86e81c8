"""The web dashboard: an HTTP API, Prometheus metrics and a live page over one runq App.

Install with ``pip install 'runq[dashboard]'``; run with ``runq dashboard APP``.
"""

from __future__ import annotations

from runq.dashboard.server import check_bind, create_app, listen, serve

__all__ = ["check_bind", "create_app", "listen", "serve"]
