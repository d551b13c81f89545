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

``/health`` and ``/metrics`` are always open: load balancers and Prometheus
call them without credentials.  Otherwise a refusal is 401 with a
``WWW-Authenticate: Bearer`` challenge when a token would help, else 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable

import falcon

__all__ = ["Authorization", "PUBLIC_PATHS"]

logger = logging.getLogger(__name__)

#: Routes (after the prefix) that need no credentials.
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


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
