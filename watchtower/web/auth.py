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

"On loopback" means a direct client: the WSGI server reports a loopback
``REMOTE_ADDR`` and the request carries no forwarding header
(``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``).  A reverse proxy on the
same host connects from 127.0.0.1 for clients anywhere, so a request it
forwards is not local, unless the proxy is listed in
``http.trusted_proxies``: then the client is the nearest address in its
forwarding header that is not a trusted proxy, and that must be loopback.
A request with no client address at all (a server on a Unix socket, which
Falcon would report as 127.0.0.1) is not local either.

The hook sees the host application's request as ``req.context.host_request``
when the API is mounted with :mod:`watchtower.web.hosts` (None otherwise),
and so the host's session.  A session cookie reaches the API with any
request the browser sends, also one that another site makes it send: a
state change (any method but GET, HEAD and OPTIONS) that only the hook let
in is refused with a 403 when the browser says it comes from another site
(``Sec-Fetch-Site`` other than ``same-origin`` or ``none``; without that
header, an ``Origin`` whose host differs from ``Host``).  The API answers no
CORS preflight, so no page of another site can use it anyway; a request
with the right token is not checked.

Whoever serves the API on a socket (``watchtower serve``, the supervisor)
calls :func:`check_bind` first: the API is never served beyond loopback
without a token.

``/health`` and ``/metrics`` are always open: load balancers and Prometheus
call them without credentials.  Otherwise a refusal is 401 with a
``WWW-Authenticate: Bearer`` challenge when a token would help, else 403.

The console's pages (``/console...``, see :mod:`watchtower.web.console`)
are let in by the same rules, fit for a browser: with a token, its login
page trades the token for a session cookie, which then opens the pages
(and only them: the JSON routes still want the token); a page asked for
without one sends the browser to the login page.  The hook and the
loopback rule apply as above.  Every state change of the console is
checked against cross-site forgery, whoever let it in but the bearer
token: a CSRF token in the form and the browser's word on where the
request comes from (see :mod:`watchtower.web.session`).  The login page
and the console's static files are open.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit

import falcon

from ..errors import ConfigError
from . import session
from .params import MAX_BODY_BYTES, bad_request

if TYPE_CHECKING:
    from ..config import Settings

__all__ = [
    "Authorization",
    "CONSOLE",
    "FORWARDING_HEADERS",
    "HOST_REQUEST",
    "PUBLIC_PATHS",
    "check_bind",
    "is_console",
    "is_loopback_host",
    "wants_html",
]

logger = logging.getLogger(__name__)

#: Routes (after the prefix) that need no credentials.
PUBLIC_PATHS = frozenset({"/health", "/metrics"})


#: The WSGI environ key under which a host application puts its own request
#: (see :mod:`watchtower.web.hosts`); the hook reads it as ``req.context.host_request``.
HOST_REQUEST = "watchtower.host_request"

#: Methods that change nothing: a cross-site request of these is harmless.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Where the console's pages live (after the prefix); its login page and static files need no credentials.
CONSOLE = "/console"
CONSOLE_LOGIN = CONSOLE + "/login"
CONSOLE_STATIC = CONSOLE + "/static/"

#: Headers by which a proxy says for whom it forwards a request.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def is_console(path: str) -> bool:
    """Whether ``path`` (after the prefix) is one of the console's."""
    return path == CONSOLE or path.startswith(CONSOLE + "/")


def wants_html(req: falcon.Request) -> bool:
    """Whether the client asks for a page rather than JSON (a browser navigating)."""
    accept = req.get_header("Accept")
    return accept is not None and req.client_prefers(["application/json", "text/html"]) == "text/html"


def _forwarded_for(req: falcon.Request) -> list[str]:
    """The client chain a proxy reported, nearest last: RFC 7239 ``for=``, else X-Forwarded-For, else X-Real-IP."""
    forwarded = req.get_header("Forwarded")
    if forwarded:
        chain = []
        for element in forwarded.split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    chain.append(_bare_address(value))
        return chain
    header = req.get_header("X-Forwarded-For") or req.get_header("X-Real-IP") or ""
    return [_bare_address(part) for part in header.split(",") if part.strip()]


def _bare_address(value: str) -> str:
    """``"[2001:db8::1]:4711"`` -> ``2001:db8::1``, ``192.0.2.1:80`` -> ``192.0.2.1``."""
    value = value.strip().strip('"')
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def _cross_site(req: falcon.Request) -> str | None:
    """What says a browser sent ``req`` from another site, or None."""
    fetch_site = req.get_header("Sec-Fetch-Site")
    if fetch_site is not None:
        return None if fetch_site.lower() in ("same-origin", "none") else f"Sec-Fetch-Site: {fetch_site}"
    origin = req.get_header("Origin")
    if origin is None:  # not a browser, or one too old to say
        return None
    host = (req.get_header("Host") or "").lower()
    return None if urlsplit(origin).netloc.lower() == host else f"Origin {origin} on host {host}"


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

    def __init__(
        self,
        *,
        token: str | None,
        authorize: Callable[[falcon.Request], bool] | None,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self._token = token.encode("utf-8") if token else None
        self.authorize = authorize
        self._trusted = tuple(ipaddress.ip_network(proxy, strict=False) for proxy in trusted_proxies)
        #: Signs and checks the console's session cookies (None without a token: no login then).
        self.sessions = session.SessionSigner(token) if token else None

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.host_request = req.env.get(HOST_REQUEST)
        req.context.console_via = None
        if req.path in PUBLIC_PATHS:
            return
        if is_console(req.path):
            self._admit_to_console(req)
            return
        if self._token is not None and self._bearer_matches(req):
            return
        if self.authorize is not None and self.authorize(req):
            why = None if req.method in SAFE_METHODS else _cross_site(req)
            if why is None:
                return
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description=f"a {req.method} from another site is refused ({why}): the host's session "
                "does not let other sites act; send the request from this site's pages or with the API token",
            )
        if self._token is None and self.authorize is None:
            why = self._not_local(req)
            if why is None:
                return
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description=f"this API has no token configured and answers direct clients on loopback only, "
                f"and {why}: set http.token (WATCHTOWER_API_TOKEN)",
            )
        if self._token is None:
            raise falcon.HTTPForbidden(
                title="Forbidden", description="the host application's authorize hook refused this request",
            )
        raise falcon.HTTPUnauthorized(
            title="Unauthorized",
            description="send the API token as 'Authorization: Bearer <token>'",
            challenges=['Bearer realm="watchtower"'],
        )

    def _admit_to_console(self, req: falcon.Request) -> None:
        """Let a console request in (``req.context.console_via`` says how) or refuse it."""
        public = req.path == CONSOLE_LOGIN or req.path.startswith(CONSOLE_STATIC)
        if self._token is not None and self._bearer_matches(req):
            req.context.console_via = "token"
            return  # no browser sends a bearer token by itself: nothing to forge
        cookies = req.get_cookie_values(session.SESSION_COOKIE) or []
        if self.sessions is not None and any(map(self.sessions.valid, cookies)):
            req.context.console_via = "session"
        elif self.authorize is not None and self.authorize(req):
            req.context.console_via = "hook"
        elif self._token is None and self.authorize is None:
            why = self._not_local(req)
            if why is not None:
                raise falcon.HTTPForbidden(
                    title="Forbidden",
                    description=f"this console has no token configured and answers direct clients on loopback "
                    f"only, and {why}: set http.token (WATCHTOWER_API_TOKEN)",
                )
            req.context.console_via = "loopback"
        elif not public:
            if self._token is None:
                raise falcon.HTTPForbidden(
                    title="Forbidden", description="the host application's authorize hook refused this request"
                )
            if req.method in SAFE_METHODS:
                base = getattr(req.context, "base_path", "")
                target = base + req.path + (f"?{req.query_string}" if req.query_string else "")
                raise falcon.HTTPSeeOther(f"{base}{CONSOLE_LOGIN}?{urlencode({'next': target})}")
            raise falcon.HTTPUnauthorized(
                title="Unauthorized",
                description="your console session has expired (or was never opened): log in again with the API token",
            )
        if req.method not in SAFE_METHODS:
            self._check_console_form(req)

    def _check_console_form(self, req: falcon.Request) -> None:
        """Refuse a console state change that another site may have made (see the module's docstring)."""
        why = _cross_site(req)
        if why is not None:
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description=f"a {req.method} from another site is refused ({why}): use the console's own pages",
            )
        req.context.form = _read_form(req)
        if not session.csrf_matches(req, req.context.form.get(session.CSRF_FIELD)):
            raise falcon.HTTPForbidden(
                title="Forbidden",
                description="this form's CSRF token is missing or out of date (it must come from a page of this "
                "console): reload the page and try again",
            )

    def _not_local(self, req: falcon.Request) -> str | None:
        """None for a direct loopback client; otherwise why the request is not one."""
        # The environ's own value: Falcon's req.remote_addr says 127.0.0.1 when there is none.
        peer = req.env.get("REMOTE_ADDR") or None
        if peer is None:
            return "this request has no client address (a Unix socket?)"
        forwarded = [name for name in FORWARDING_HEADERS if req.get_header(name) is not None]
        if not forwarded:
            return None if _is_loopback(peer) else f"this request comes from {peer}"
        if not self._is_trusted(peer):
            return (f"this request was forwarded by a proxy ({forwarded[0]} from {peer}, not in "
                    "http.trusted_proxies)")
        client = self._client_behind(req)
        if client is None:
            return f"its {forwarded[0]} header names no client address"
        return None if _is_loopback(client) else f"it was forwarded for {client}"

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def _client_behind(self, req: falcon.Request) -> str | None:
        """The nearest address in the forwarding chain that is not a trusted proxy."""
        chain = _forwarded_for(req)
        for address in reversed(chain):
            if not self._is_trusted(address):
                return address
        return chain[0] if chain else None

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


def _read_form(req: falcon.Request) -> dict[str, str]:
    """A console form's fields (``application/x-www-form-urlencoded``, at most MAX_BODY_BYTES); one value each."""
    content_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported Media Type",
            description="the console's forms are sent as application/x-www-form-urlencoded, "
            f"not {content_type or 'nothing'!r}",
        )
    length = req.content_length
    raw = req.bounded_stream.read(MAX_BODY_BYTES + 1) if length is None or length <= MAX_BODY_BYTES else b""
    if (length is not None and length > MAX_BODY_BYTES) or len(raw) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large", description=f"a console form is at most {MAX_BODY_BYTES} bytes"
        )
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as error:
        raise bad_request(f"the form cannot be read: {error}") from None
    return dict(pairs)
