"""``watchtower serve``: the control API and ``/metrics`` on a production WSGI server (waitress).

Binds to loopback by default.  Any other address is refused unless an API
token is configured (``http.token`` / ``WATCHTOWER_API_TOKEN``): the API can
retry jobs and stop workers, so it is never open to a network by accident.
The server is the supervisors' own (:mod:`watchtower.http_server`): bounded
connections, idle ones closed after a few seconds.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import click

from .context import EXIT_FAILED, import_path_option, settings_from

__all__ = ["serve"]

logger = logging.getLogger(__name__)


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on (setting http.host, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (setting http.port, default 9192; 0 picks a free one).")
@click.option("--prefix", default=None, help="Path prefix of the API (setting http.prefix, default /watchtower).")
@click.option("--app", "app_module", default=None, help="Module that sets your broker (setting app); retries go to it.")
@import_path_option
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, prefix: str | None, app_module: str | None,
    paths: tuple[str, ...],
) -> None:
    """Serve the control API (and /metrics at the root) until stopped.

    SIGTERM or SIGINT stops it (exit 0).  A port in use or an address this
    host lacks is one line naming the setting to change (exit 1).
    """
    from ..app import add_import_paths
    from ..http_server import start_http_server
    from ..web import create_app
    from ..web.app import normalize_prefix
    from ..web.auth import check_bind

    settings = settings_from(ctx, **{"http.host": host, "http.port": port, "http.prefix": prefix, "app": app_module})
    check_bind(settings)
    add_import_paths(paths)  # the app is imported on the first retry
    base = normalize_prefix(settings.http_prefix)
    server = start_http_server(create_app(settings), host=settings.http_host, port=settings.http_port,
                               path=f"{base}/", what="the API", flags=True)
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()  # only recorded: the loop below stops the server

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for address, bound_port in server.listening:
            shown = f"[{address}]" if ":" in address else address
            click.echo(f"watchtower API listening on http://{shown}:{bound_port}{base}/ (metrics at /metrics)",
                       err=True)
        while server.running and not stopping.wait(1.0):
            pass
    finally:
        server.stop()
    if not stopping.is_set():  # the server's loop died: its log says why
        ctx.exit(EXIT_FAILED)
