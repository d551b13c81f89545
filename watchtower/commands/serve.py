"""``watchtower serve``: the control API and ``/metrics`` on a production WSGI server (waitress).

Binds to loopback by default.  Any other address is refused unless an API
token is configured (``http.token`` / ``WATCHTOWER_API_TOKEN``): the API can
retry jobs and stop workers, so it is never open to a network by accident.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import click

from ..cli import cli, settings_from

__all__ = ["serve"]

logger = logging.getLogger(__name__)


def _stop(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds waitress's loop in the main thread; the finally
    # below closes the listening socket.
    raise SystemExit(0)


@cli.command("serve")
@click.option("--host", default=None, help="Address to listen on (setting http.host, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (setting http.port, default 9192; 0 picks a free one).")
@click.option("--prefix", default=None, help="Path prefix of the API (setting http.prefix, default /watchtower).")
@click.option("--app", "app_module", default=None, help="Module that sets your broker (setting app); retries go to it.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, prefix: str | None, app_module: str | None) -> None:
    """Serve the control API (and /metrics at the root) until stopped."""
    import waitress

    from ..web import create_app
    from ..web.app import normalize_prefix
    from ..web.auth import check_bind

    settings = settings_from(ctx, **{"http.host": host, "http.port": port, "http.prefix": prefix, "app": app_module})
    check_bind(settings)
    base = normalize_prefix(settings.http_prefix)
    # Waitress would strip Forwarded and X-Forwarded-* from every peer it does
    # not trust (all of them, unconfigured), and a proxied request would then
    # look like a direct loopback one: the API judges those headers itself
    # (watchtower.web.auth, http.trusted_proxies).
    server = waitress.create_server(create_app(settings), host=settings.http_host, port=settings.http_port,
                                    clear_untrusted_proxy_headers=False)
    listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
    for address, bound_port in listening:
        shown = f"[{address}]" if ":" in str(address) else address
        click.echo(f"watchtower API listening on http://{shown}:{bound_port}{base}/ (metrics at /metrics)", err=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
