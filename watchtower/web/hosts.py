"""Mount the API inside a Flask, Django or Starlette/FastAPI app, behind the host's own login.

Mounted with werkzeug's ``DispatcherMiddleware`` or a bare ``a2wsgi``, the
API runs beside the host's request handling: its ``authorize`` hook gets a
Falcon request, and ``flask.session``, Django's ``request.user`` or
Starlette's ``request.session`` are out of its reach.  These helpers run the
API *inside* the host's handling instead and hand the host's request to the
hook as ``req.context.host_request``:

- :func:`mount_flask` adds a view to a Flask app: the hook runs in Flask's
  request context (``flask.session``, ``flask.g``, extensions built on them),
  after the app's ``before_request`` functions; ``host_request`` is
  ``flask.request``;
- :func:`django_route` is a URL pattern for ``urlpatterns``: the view runs
  after Django's middleware, so ``host_request.user`` and
  ``host_request.session`` are set (under WSGI and ASGI);
- :func:`starlette_app` wraps the API for ``app.mount`` / ``Mount``:
  ``host_request`` is a ``starlette.requests.Request`` on the mount's scope,
  so ``request.session`` (SessionMiddleware) and ``request.user``
  (AuthenticationMiddleware) are there; its body belongs to the API.

Who gets in is decided as ever by :mod:`watchtower.web.auth`: the token, the
hook, or neither and then loopback only.  None of the frameworks is a
dependency of Watchtower; each helper imports its own.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .auth import HOST_REQUEST

__all__ = ["django_route", "mount_flask", "starlette_app"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Every method goes to the API, which answers 405 for what a route does not take.
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def mount_flask(app: Any, path: str, api: WSGIApp) -> None:
    """Answer ``path`` and everything under it in the Flask ``app`` with ``api``, as a view of the app."""
    import flask

    mount = "/" + path.strip("/")
    wsgi_mount = _wsgi(mount)

    def view(rest: str = "") -> flask.Response:
        request = flask.request
        environ = request.environ  # the rule matched: PATH_INFO starts with the mount point
        moved = _environ(environ, environ.get("SCRIPT_NAME", "") + wsgi_mount, environ["PATH_INFO"][len(wsgi_mount):],
                         request.get_data(), request._get_current_object())  # type: ignore[attr-defined]
        status, headers, body = _call(api, moved)
        return flask.Response(body, status=status, headers=headers)

    options: dict[str, Any] = {"endpoint": f"watchtower:{mount}", "view_func": view, "methods": METHODS,
                               "strict_slashes": False}
    app.add_url_rule(mount, **options)
    app.add_url_rule(mount + "/<path:rest>", **options)


def django_route(route: str, api: WSGIApp) -> Any:
    """A URL pattern (for ``urlpatterns``) that answers ``route`` and everything under it with ``api``."""
    from django.http import HttpResponse
    from django.urls import re_path
    from django.views.decorators.csrf import csrf_exempt

    # Exempt from Django's CSRF check: bearer-token clients send no CSRF token,
    # and the API itself refuses a cross-site state change that a session let
    # in (see watchtower.web.auth).
    @csrf_exempt
    def view(request: Any, rest: str | None = None) -> HttpResponse:
        rest = rest or ""
        # Under ASGI, META is no WSGI environ: some values are not strings, the wsgi.* keys are missing.
        base: dict[str, Any] = {key: str(value) for key, value in request.META.items() if "." not in key}
        base.update({"wsgi.version": (1, 0), "wsgi.url_scheme": request.scheme, "wsgi.errors": sys.stderr,
                     "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False})
        base.setdefault("SERVER_PROTOCOL", "HTTP/1.1")
        script_name = _wsgi(request.path[: len(request.path) - len(rest)])
        status, headers, body = _call(api, _environ(base, script_name, _wsgi(rest), request.body, request))
        code, _, reason = status.partition(" ")
        response = HttpResponse(body, status=int(code), reason=reason or None)
        for name, value in headers:
            if name.lower() == "set-cookie":  # a Django response holds one value per other header
                response.cookies.load(value)
            else:
                response[name] = value
        return response

    return re_path(rf"^{re.escape(route.strip('/'))}(?P<rest>/.*)?$", view)


def starlette_app(api: WSGIApp) -> Any:
    """``api`` as an ASGI app to mount in Starlette or FastAPI: ``app.mount("/watchtower", starlette_app(api))``."""
    from a2wsgi import WSGIMiddleware
    from starlette.requests import Request

    def with_host_request(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[HOST_REQUEST] = Request(environ["asgi.scope"])  # a2wsgi keeps the ASGI scope there
        return api(environ, start_response)

    return WSGIMiddleware(with_host_request)  # type: ignore[arg-type]


def _wsgi(text: str) -> str:
    """A path as a WSGI environ holds it: its UTF-8 bytes as latin-1 text."""
    return text.encode("utf-8").decode("latin-1")


def _environ(base: Mapping[str, Any], script_name: str, path_info: str, body: bytes,
             host_request: object) -> dict[str, Any]:
    """The host's environ, moved under the mount point, with the body read so far and the host's request."""
    environ = dict(base)
    environ.update({
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        # The host may have read the body already (it caches what it read): the API reads this copy.
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        HOST_REQUEST: host_request,
    })
    return environ


def _call(api: WSGIApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run ``api`` on ``environ``: its status line, headers and whole body (the API's answers are small)."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
        started[:] = [status, headers]
        return written.append

    chunks = api(environ, start_response)
    try:
        written.extend(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return started[0], started[1], b"".join(written)
