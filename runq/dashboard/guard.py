"""Request guards for the dashboard, as one pure ASGI middleware (streams pass through untouched).

- ``Host`` must be one of the dashboard's own names (loopback names and addresses, the
  address it was bound to, ``--allowed-host``): else 400, against DNS rebinding.
- A state-changing request (any method but GET, HEAD, OPTIONS) is refused with 403 when
  it comes from another site: an ``Origin`` that is not this dashboard's own, or
  ``Sec-Fetch-Site`` other than ``same-origin``/``none``; and with 415 unless its
  ``Content-Type`` is ``application/json``, which an HTML form cannot send.
- Every response gets security headers: a CSP without inline script, no framing,
  ``nosniff``, no referrer.

All of it applies with or without a token.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI (/docs) starts from an inline script and sets inline styles: it gets its own policy.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def split_host(value: str) -> tuple[str, str]:
    """``host[:port]`` (IPv6 in brackets) → (lower-case host, port or "")."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return host, port


def is_loopback_name(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def own_names(hosts: Iterable[str]) -> frozenset[str]:
    """The names a dashboard answers to besides loopback: its bind address (unless a wildcard)."""
    names = {split_host(h)[0] if h.count(":") <= 1 or h.startswith("[") else h.lower() for h in hosts if h}
    return frozenset(names - {"0.0.0.0", "::", ""})


class Guard:
    """ASGI middleware enforcing the rules above in front of ``app``."""

    def __init__(
        self, app: Any, hosts: Iterable[str] = (), hint: str = "start it with --allowed-host NAME to serve that name"
    ) -> None:
        self.app = app
        self.names = own_names(hosts)
        self.hint = hint  # how this dashboard is told another name (the CLI's flag, a mount's argument)

    def allowed_host(self, host: str) -> bool:
        return is_loopback_name(host) or host in self.names

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope["method"], headers)
        docs = scope["path"] == "/docs"

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                policy = (DOCS_CSP if docs else CSP).encode()
                message["headers"] = [*message.get("headers", []), *HEADERS, (b"content-security-policy", policy)]
            await send(message)

        if refusal is None:
            await self.app(scope, receive, with_headers)
            return
        status, detail = refusal
        body = json.dumps({"detail": detail}).encode()
        await with_headers(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def refusal(self, method: str, headers: dict[str, str]) -> tuple[int, str] | None:
        """(status, reason) when the request must be refused, else None."""
        host_header = headers.get("host", "")
        host, port = split_host(host_header)
        if not self.allowed_host(host):
            return 400, f"Host {host_header!r} is not one of this dashboard's names ({self.hint})"
        if method.upper() in SAFE_METHODS:
            return None
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return 403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host, port):
            return 403, f"cross-origin request refused (Origin: {origin})"
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            return 415, "a request that changes state needs Content-Type: application/json"
        return None


def same_origin(origin: str, host: str, port: str) -> bool:
    """Whether ``Origin`` names the host and port this request was sent to (default ports aside)."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False  # includes "null": sandboxed frames, file: pages
    try:
        origin_port = parts.port
    except ValueError:
        return False
    default = {"http": 80, "https": 443}[parts.scheme]
    return parts.hostname == host and (origin_port or default) == (int(port) if port.isdigit() else default)
