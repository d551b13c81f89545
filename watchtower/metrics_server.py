"""``/metrics`` over HTTP: a WSGI app answering it, and the bounded server a supervisor runs it in.

The server is :func:`watchtower.http_server.start_http_server`'s (the same
limits as ``watchtower serve``); a supervisor serves the whole API app
through it when it may (see :mod:`watchtower.supervisor_server`), and this module's
app, which answers ``/metrics`` alone, when the bind is refused to the API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .exposition import exposition
from .http_server import HTTPServer, start_http_server

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["MetricsServer", "metrics_app", "start_metrics_server"]

logger = logging.getLogger(__name__)

#: A running /metrics server: ``.host``, ``.port``, ``.url`` (ending in /metrics), ``.stop()``.
MetricsServer = HTTPServer


def metrics_app(settings: Settings, *, broker: Any = None, supervisor: str | None = None) -> Callable[..., Any]:
    """A WSGI app answering ``GET /metrics`` (and 404 elsewhere)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO", "") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: Prometheus metrics are at /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"method not allowed\n"]
        try:
            body, content_type = exposition(settings, broker=broker, supervisor=supervisor)
        except Exception:
            logger.exception("cannot build the /metrics exposition")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"cannot build the metrics: see the supervisor's log\n"]
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    return app


def start_metrics_server(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    broker: Any = None,
    supervisor: str | None = None,
    app: Callable[..., Any] | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (default ``http.host:http.port``) from a thread.

    The server is :func:`watchtower.http_server.start_http_server`'s, with its
    connection limit and idle timeout.  ``port=0`` picks a free port (see ``.port``).  ``app`` serves another WSGI
    app instead (the API app, which answers /metrics too).  A port in use, or
    an address this host does not have, raises MetricsServerError naming the
    setting to change; the supervisor reports it, its workers never see it.
    """
    bind: str = settings.http_host if host is None else host
    port = settings.http_port if port is None else port
    server = start_http_server(app or metrics_app(settings, broker=broker, supervisor=supervisor),
                               host=bind, port=port, path="/metrics", what="/metrics", name="watchtower-metrics")
    if bind not in ("127.0.0.1", "::1", "localhost"):
        logger.warning("serving /metrics on %s:%s, reachable from other hosts", bind, server.port)
    logger.info("serving Prometheus metrics at %s", server.url)
    return server
