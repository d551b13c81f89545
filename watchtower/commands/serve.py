"""``watchtower serve``: the control API and ``/metrics`` on a production WSGI server (waitress).

Binds to loopback by default.  Any other address is refused unless an API
token is configured (``http.token`` / ``WATCHTOWER_API_TOKEN``): the API can
retry jobs and stop workers, so it is never open to a network by accident.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
from types import FrameType

import click

from ..cli import cli, settings_from
from ..config import Settings
from ..errors import ConfigError

__all__ = ["serve", "check_bind", "is_loopback_host"]

logger = logging.getLogger(__name__)


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


def _stop(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds waitress's loop in the main thread; the finally
    # below closes the listening socket.
    raise SystemExit(0)


@cli.command("serve")
@click.option("--host", default=None, help="Address to listen on (setting http.host, default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on (setting http.port, default 9191; 0 picks a free one).")
@click.option("--prefix", default=None, help="Path prefix of the API (setting http.prefix, default /watchtower).")
@click.option("--app", "app_module", default=None, help="Module that sets your broker (setting app); retries go to it.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, prefix: str | None, app_module: str | None) -> None:
    """Serve the control API (and /metrics at the root) until stopped."""
    import waitress

    from ..web import create_app
    from ..web.app import normalize_prefix

    settings = settings_from(ctx, **{"http.host": host, "http.port": port, "http.prefix": prefix, "app": app_module})
    check_bind(settings)
    base = normalize_prefix(settings.http_prefix)
    server = waitress.create_server(create_app(settings), host=settings.http_host, port=settings.http_port)
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
