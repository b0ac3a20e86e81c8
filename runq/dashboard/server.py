"""``create_app(app)``: the dashboard as a FastAPI application, and ``serve`` for the CLI.

Everything the application needs hangs off the factory's closure (the runq App, the
token, a per-app Prometheus registry), never module globals, so tests and embedders
can build as many dashboards in one process as they like.

Security model: a dashboard can cancel, retry and purge, so it is only ever open to
loopback unless its operator chose otherwise. With a token, the page, ``/metrics``
and every ``/api`` call need it, as ``Authorization: Bearer <token>`` or ``?token=``
(browsers cannot put headers on a page load or an ``EventSource``); the page keeps it
in ``sessionStorage`` and drops it from the address bar. Static assets and the
OpenAPI description are public: they hold no data. With or without a token,
:class:`runq.dashboard.guard.Guard` refuses a foreign ``Host`` (DNS rebinding) and
cross-site or non-JSON state changes (CSRF), and adds security headers.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import socket
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runq.app import App
from runq.dashboard.api import create_router, unprocessable
from runq.dashboard.guard import Guard
from runq.dashboard.metrics import create_registry
from runq.errors import BrokerUnavailable

STATIC = resources.files("runq.dashboard") / "static"
TOKEN_ENV = "RUNQ_DASHBOARD_TOKEN"


def authorised(token: str | None, request: Request) -> bool:
    """No token configured, or the request carries it (header first, then ``?token=``)."""
    if token is None:
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    given = credentials.strip() if scheme.lower() == "bearer" else request.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


def token_guard(token: str | None) -> list[Any]:
    """Route dependencies enforcing the token; they also put the bearer scheme into the OpenAPI."""
    if token is None:
        return []
    bearer = HTTPBearer(auto_error=False, description="The dashboard's --token (or ?token=).")

    async def guard(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not authorised(token, request):
            raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})

    return [Depends(guard)]


def create_app(app: App, token: str | None = None, *, interval: float = 1.0, hosts: tuple[str, ...] = ()) -> FastAPI:
    """A dashboard for ``app``; ``token`` (if given) guards the page, the API and the metrics.

    ``interval`` is the seconds between live updates (tests make it shorter). ``hosts``
    are the names it answers to besides loopback ones (its ``--host``, ``--allowed-host``).
    """
    token = token or None
    guard = token_guard(token)
    web = FastAPI(
        title="runq dashboard",
        version=_version(),
        description="Inspect and steer a runq broker: tasks, queues, workers, the dead-letter set.",
        docs_url=None,
        redoc_url=None,
    )
    web.include_router(create_router(app, interval), dependencies=guard)
    web.add_exception_handler(BrokerUnavailable, broker_unavailable)
    web.add_exception_handler(RequestValidationError, unprocessable)
    registry = create_registry(app)

    @web.get("/metrics", dependencies=guard, response_class=Response, include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @web.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        if not authorised(token, request):
            return HTMLResponse(_static_text("login.html"), status_code=401)
        return HTMLResponse(_static_text("index.html"), headers={"Cache-Control": "no-store"})

    @web.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI served from the package (vendored from npm), so /docs works offline."""
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="runq dashboard API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    web.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    web.add_middleware(Guard, hosts=hosts)
    web.state.runq_app = app
    return web


async def broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """An outage is the broker's fault, not the dashboard's: 503, so clients retry later."""
    return JSONResponse({"detail": f"broker unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"})


def _static_text(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runq")
    except PackageNotFoundError:
        return "0"


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def new_token() -> str:
    """A random token for a dashboard started without one (as Jupyter does)."""
    return secrets.token_urlsafe(24)


def login_url(host: str, port: int, token: str | None) -> str:
    """The address to open: loopback for a wildcard bind, with ``?token=`` when there is one."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to expose the dashboard beyond this machine without a token (``ValueError``)."""
    if not token and not insecure and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host!r} (not a loopback address) without a token: "
            f"pass --token (or set {TOKEN_ENV}), or --insecure to serve it open"
        )


def listen(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket, bound before anything is printed: a port in use is an
    ``OSError`` here, not a login URL followed by uvicorn's error. Port 0 picks a free one."""
    [(family, kind, proto, _, address), *_] = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart is not "in use"
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class MaskToken(logging.Filter):
    """Hides ``token=…`` in uvicorn's access log lines (``GET /?token=… 200``): a login URL in a
    log would hand the dashboard to whoever reads the log."""

    QUERY = re.compile(r"(?<=[?&])token=[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.QUERY.sub("token=***", a) if isinstance(a, str) else a for a in record.args)
        return True


def serve(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    sock: socket.socket | None = None,
    **uvicorn: Any,
) -> None:
    """Run the dashboard with uvicorn until interrupted (the caller has run :func:`check_bind`),
    on ``sock`` if given (from :func:`listen`), else on a socket bound here."""
    import uvicorn as server

    token = token or os.environ.get(TOKEN_ENV) or None
    sock = sock or listen(host, port)
    config = server.Config(
        create_app(app, token, hosts=(host, *allowed_hosts)),
        host=host,
        port=sock.getsockname()[1],
        timeout_graceful_shutdown=2,  # live-update streams never end by themselves
        **uvicorn,
    )
    logging.getLogger("uvicorn.access").addFilter(MaskToken())  # after Config, which sets logging up
    with sock, contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl+C it handled cleanly
        server.Server(config).run(sockets=[sock])
