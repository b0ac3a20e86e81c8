"""``api_app(app, token=...)``: the dashboard's JSON API, to mount in your own FastAPI app.

    web.mount("/runq", runq.dashboard.api_app(queue, token=os.environ["RUNQ_ADMIN_TOKEN"]))

The routes are ``runq dashboard``'s ``/api`` (submit by name, task info, cancel, retry,
list, queues, workers, stats, health, the live ``/api/events`` stream), under the mount's
prefix. A web app is usually public, so the mounted API is never open: it needs a token
(``Authorization: Bearer``, or ``?token=``) or your own auth as FastAPI dependencies, or
both. It is a sub-application with the dashboard's own guard around it, so SPEC §7 holds
as it does in ``runq dashboard``: no state change from another site (``Origin``,
``Sec-Fetch-Site``, JSON-only POSTs), none through GET, and a ``Host`` that is not one of
its names (loopback, ``hosts``) refused. Your own routes are untouched by any of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from runq.app import App
from runq.dashboard.api import create_router, unprocessable
from runq.dashboard.guard import Guard
from runq.dashboard.server import broker_unavailable, token_guard
from runq.errors import BrokerUnavailable

HINT = "pass hosts=[NAME] to runq.dashboard.api_app to serve that name"


def api_app(
    app: App,
    token: str | None = None,
    *,
    dependencies: Sequence[Any] = (),
    hosts: Iterable[str] = (),
    interval: float = 1.0,
) -> FastAPI:
    """The JSON API over ``app``, as an application to ``mount`` in yours.

    ``token``: what every call must carry. ``dependencies``: your own auth, as FastAPI
    dependencies run before every route (``[Depends(require_admin)]``); give either or both.
    ``hosts``: the names your app is reached by (``"api.example.com"``), besides loopback
    ones; any other ``Host`` gets 400. ``interval``: seconds between ``/api/events`` snapshots.
    """
    guards = [*token_guard(token or None), *dependencies]
    if not guards:
        raise ValueError(
            "api_app needs a token (or your own auth in dependencies=[Depends(...)]): "
            "a web app's API must not let anyone cancel, retry or purge tasks"
        )
    web = FastAPI(
        title="runq API",
        description="Inspect and steer a runq broker: tasks, queues, workers, the dead-letter set.",
        docs_url=None,
        redoc_url=None,
    )
    web.include_router(create_router(app, interval), dependencies=guards)
    web.add_exception_handler(BrokerUnavailable, broker_unavailable)
    web.add_exception_handler(RequestValidationError, unprocessable)
    web.add_middleware(Guard, hosts=tuple(hosts), hint=HINT)
    web.state.runq_app = app
    return web
