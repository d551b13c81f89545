"""Who may use the API: a bearer token, a host application's hook, or loopback only.

A request is let in when any of these holds:

- it carries ``Authorization: Bearer <http.token>`` (compared in constant
  time), when a token is configured;
- the ``authorize(req)`` hook given to :func:`~watchtower.web.create_app`
  returns True (a host application's own login, as Horizon's gate);
- neither a token nor a hook is configured and the client is on loopback
  (the standalone server binds to loopback by default, and refuses any other
  address without a token; an app mounted in a public host without either
  still answers only local clients).

Whoever serves the API on a socket (``watchtower serve``, the supervisor)
calls :func:`check_bind` first: the API is never served beyond loopback
without a token.

``/health`` and ``/metrics`` are always open: load balancers and Prometheus
call them without credentials.  Otherwise a refusal is 401 with a
``WWW-Authenticate: Bearer`` challenge when a token would help, else 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import falcon

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Authorization", "PUBLIC_PATHS", "check_bind", "is_loopback_host"]

logger = logging.getLogger(__name__)

#: Routes (after the prefix) that need no credentials.
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos)


def check_bind(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a token (ConfigError naming the settings)."""
    if settings.http_token or is_loopback_host(settings.http_host):
        return
    source = settings.sources.get("http.host", "the defaults")
    if source.startswith("command line"):
        source = "--host"
    raise ConfigError(
        f"refusing to serve the API on {settings.http_host!r} (from {source}) without a token: "
        "set http.token (WATCHTOWER_API_TOKEN) or bind to 127.0.0.1"
    )


class Authorization:
    """Falcon middleware that lets a request in or refuses it (see the module's docstring)."""

    def __init__(self, *, token: str | None, authorize: Callable[[falcon.Request], bool] | None) -> None:
        self._token = token.encode("utf-8") if token else None
        self.authorize = authorize

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in PUBLIC_PATHS:
            return
        if self._token is not None and self._bearer_matches(req):
            return
        if self.authorize is not None and self.authorize(req):
            return
        if self._token is None and self.authorize is None:
            if _is_loopback(req.remote_addr):
                return
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description="this API has no token configured and answers clients on loopback only: "
                "set http.token (WATCHTOWER_API_TOKEN)",
            )
        if self._token is None:
            raise falcon.HTTPForbidden(title="Forbidden", description="the host application's authorize hook refused this request")
        raise falcon.HTTPUnauthorized(
            title="Unauthorized",
            description="send the API token as 'Authorization: Bearer <token>'",
            challenges=['Bearer realm="watchtower"'],
        )

    def _bearer_matches(self, req: falcon.Request) -> bool:
        header = req.get_header("Authorization") or ""
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        assert self._token is not None
        # Header text is latin-1 decoded bytes; encode it back losslessly
        # for a byte-wise constant-time comparison (str compare_digest
        # refuses non-ASCII).
        given = credentials.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self._token)
