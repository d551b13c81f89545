"""The HTTP server of the control API and ``/metrics``: waitress, bounded, in a thread of its own.

``watchtower serve`` and every supervisor serve through :func:`start_http_server`,
so both have the same limits.  Waitress runs one ``poll()`` loop for every
connection and hands a request to one of a few threads only once it has been
read whole; the response is buffered and written back by the loop.  A client
that connects and sends nothing, trickles half a request, or never reads
its answer therefore holds one file descriptor, never a thread, and
``/health`` and ``/metrics`` answer beside hundreds of them.

Why these limits: with waitress's defaults (at most 100 connections, kept
for 120 s when silent) 100 idle connections stop every route for two
minutes, and a wsgiref server starts a thread per connection and never
closes an idle one.  tests/test_http_servers.py holds that ``watchtower
serve`` and a supervisor answer beside 500 idle connections and close them.

What a client can expect (the README says the same for reverse proxies):

- a connection silent for :data:`IDLE_TIMEOUT` seconds (nothing sent since
  it opened, half a request, a keep-alive connection between requests, a
  response it does not read) is closed by the server, within
  :data:`CLEANUP_INTERVAL` more seconds; a request being answered is never
  cut;
- at most :data:`CONNECTION_LIMIT` connections are open at once (fewer if the
  open-file limit cannot be raised that far; the log says so).  Past that,
  new connections are not refused: they wait in the kernel's listen queue
  (:data:`BACKLOG`) until idle ones are closed, so a flood of idle
  connections delays an answer by about one idle timeout rather than
  failing it.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading
from collections.abc import Callable
from typing import Any

from .errors import MetricsServerError

__all__ = [
    "BACKLOG",
    "CLEANUP_INTERVAL",
    "CONNECTION_LIMIT",
    "IDLE_TIMEOUT",
    "THREADS",
    "HTTPServer",
    "start_http_server",
]

logger = logging.getLogger(__name__)

#: Connections open at once.  An idle one costs a file descriptor and a few
#: kilobytes, so the limit can sit far above what the API and Prometheus
#: need (a handful) and above what a misbehaving client or a crowd of
#: browsers opens, while leaving the process (a supervisor with its
#: children's pipes, its database connections) descriptors of its own.
CONNECTION_LIMIT = 1000
#: Seconds a connection may stay silent before the server closes it.  Long
#: enough for any client to send a request once connected, and shorter than
#: Prometheus' usual 15 s scrape interval, so a scraper's kept-alive
#: connection is closed between two scrapes rather than as one starts.
#: Idle connections cost nothing but a descriptor; this bounds how long a
#: flood of them holds the connection limit (waitress's 120 s held it for
#: two minutes).
IDLE_TIMEOUT = 10
#: Seconds between two looks for idle connections: one pass over the open
#: connections, cheap at a thousand; waitress's 30 s would keep a silent
#: connection up to 150 s.
CLEANUP_INTERVAL = 1
#: Requests answered at once (each on a thread of its own, with its own
#: database connection).  A request gets a thread only when read whole, so
#: slow clients never hold one; the API's routes are short reads (budget
#: 50 ms) and a scrape takes a few milliseconds, so four keep up with
#: dashboards and several Prometheus servers while bounding the ledger
#: connections that one server opens.
THREADS = 4
#: Connections the kernel queues while the server is at its limit (Linux
#: caps it at net.core.somaxconn).  A full queue does not refuse either:
#: Linux drops the SYN and the client retries.
BACKLOG = 1024
#: A request's headers (nginx's default buffers hold 32 KiB); waitress's
#: 256 KiB let each of a thousand connections buffer a quarter megabyte.
MAX_REQUEST_HEADER_BYTES = 64 * 1024
#: A request's body: the API takes small JSON documents and forms only.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
#: Descriptors left to the rest of the process beyond those open when the
#: server starts: a supervisor's pipes to new children, database and broker
#: connections, the metrics files it reads at each scrape.
FD_RESERVE = 256
#: Seconds one turn of the loop waits for a socket event; also how soon the
#: loop notices stop() when it cannot be woken at once.
LOOP_TIMEOUT = 1.0
#: The connection limit when the open-file limit leaves less room than this:
#: a server taking fewer would be of no use (past the real room, accepting
#: fails with EMFILE, which waitress logs, and the client waits).
_MIN_CONNECTIONS = 16


class HTTPServer:
    """A running server: where it listens (``host``, ``port``, ``url``), and :meth:`stop`."""

    def __init__(self, server: Any, socket_map: dict[int, Any], *, path: str, name: str) -> None:
        self._server = server
        self._map = socket_map
        self._stopping = threading.Event()
        # Held while the loop closes its sockets and while stop() wakes it:
        # the wake-up pipe is never written once closed (its number may
        # belong to another file by then).
        self._closing = threading.Lock()
        self._closed = False
        listening = getattr(server, "effective_listen", None) or [(server.effective_host, server.effective_port)]
        #: Every (address, port) listened on: a name such as ``localhost``
        #: may stand for an IPv4 and an IPv6 address (with port 0, each
        #: gets a port of its own).
        self.listening: list[tuple[str, int]] = [(str(host), int(port)) for host, port in listening]
        self.host: str = self.listening[0][0]
        self.port: int = self.listening[0][1]
        self.path = path
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)

    @property
    def base_url(self) -> str:
        """``http://host:port`` (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL of what this server was started for (``.../metrics``, ``.../watchtower/``)."""
        return self.base_url + self.path

    @property
    def running(self) -> bool:
        """Whether the loop still serves (False after :meth:`stop`, or if it died: its log says why)."""
        return self._thread.is_alive()

    def _start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        from waitress import wasyncore

        try:
            # One turn at a time rather than waitress's run(), which serves
            # until every socket is closed: stop() sets the flag and wakes the
            # loop, and every socket is closed here, on the loop's own thread.
            while not self._stopping.is_set():
                wasyncore.loop(timeout=LOOP_TIMEOUT, map=self._map, use_poll=True, count=1)
        except Exception:
            logger.exception("the HTTP server on %s stopped", self.base_url)
        finally:
            with self._closing:
                self._closed = True
                wasyncore.close_all(self._map)
            self._server.task_dispatcher.shutdown()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every socket, and wait (up to ``timeout`` s) for requests in hand."""
        self._stopping.set()
        wake = getattr(self._server, "pull_trigger", None)  # one address; otherwise within LOOP_TIMEOUT
        with self._closing:
            if wake is not None and not self._closed:
                wake()
        self._thread.join(timeout)


def start_http_server(
    app: Callable[..., Any],
    *,
    host: str,
    port: int,
    path: str = "/",
    what: str = "the API",
    flags: bool = False,
    name: str = "watchtower-http",
    connection_limit: int = CONNECTION_LIMIT,
    idle_timeout: int = IDLE_TIMEOUT,
) -> HTTPServer:
    """Serve the WSGI ``app`` on ``host:port`` from a thread of its own.

    ``port=0`` picks a free port (see ``.port``); an IPv6 address (``::1``)
    works as well.  ``path`` is what ``.url`` points at; ``what`` names the
    service in errors.  A port in use, or an address this host does not
    have, raises :class:`~watchtower.errors.MetricsServerError`: one line
    naming the setting to change (and, with ``flags``, ``watchtower
    serve``'s ``--host`` / ``--port``).  ``connection_limit`` and
    ``idle_timeout`` are for tests; see the module's constants.
    """
    import waitress

    socket_map: dict[int, Any] = {}
    limit = _connection_limit(connection_limit)
    try:
        server = waitress.create_server(
            app,
            map=socket_map,
            host=host,
            port=port,
            threads=THREADS,
            # waitress counts its listening sockets and wake-up pipes (one of
            # each per address) in the limit; leave room for two addresses.
            connection_limit=limit + 4,
            channel_timeout=idle_timeout,
            cleanup_interval=CLEANUP_INTERVAL,
            backlog=BACKLOG,
            max_request_header_size=MAX_REQUEST_HEADER_BYTES,
            max_request_body_size=MAX_REQUEST_BODY_BYTES,
            # select() cannot watch a descriptor numbered 1024 or more.
            asyncore_use_poll=True,
            # Waitress would strip Forwarded and X-Forwarded-* from every peer it
            # does not trust (all of them, unconfigured), and a proxied request
            # would then look like a direct loopback one: the API judges those
            # headers itself (watchtower.web.auth, http.trusted_proxies).
            clear_untrusted_proxy_headers=False,
        )
    except (OSError, ValueError) as error:
        raise MetricsServerError(_bind_error(error, what, host, port, flags)) from error
    handle = HTTPServer(server, socket_map, path=path, name=name)
    handle._start()
    logger.debug("serving %s at %s (at most %d connections, idle ones closed after %d s)",
                 what, handle.url, limit, idle_timeout)
    return handle


def _bind_error(error: OSError | ValueError, what: str, host: str, port: int, flags: bool) -> str:
    shown = f"[{host}]" if ":" in host else host
    code = getattr(error, "errno", None)
    if code == errno.EADDRINUSE:
        reason, change = "the port is in use (another supervisor or program listens there)", "port"
    elif code == errno.EACCES:
        reason, change = "this user may not listen on that port", "port"
    elif code in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
        reason, change = "this host has no such address", "host"
    elif isinstance(error, ValueError):  # waitress: the name did not resolve
        reason, change = "the address cannot be resolved", "host"
    else:
        reason, change = getattr(error, "strerror", None) or str(error), "port"
    setting = f"http.{change} (WATCHTOWER_HTTP_{change.upper()})"
    if flags:
        setting = f"--{change} (or http.{change}, WATCHTOWER_HTTP_{change.upper()})"
    if change == "port":
        advice = f"set {setting} to a free port, or 0 for any free port"
    else:
        advice = f"set {setting} to an address of this host (127.0.0.1 or ::1 for loopback)"
    return f"cannot serve {what} on {shown}:{port}: {reason}; {advice}"


def _connection_limit(wanted: int) -> int:
    """How many connections this process's open-file limit allows, raising its soft limit as far as needed.

    A soft limit of 1024 (the usual default) with a supervisor's own
    descriptors would leave a flood of connections to fail with EMFILE, and
    the supervisor unable to start a worker; the hard limit is usually far
    higher, and an unprivileged process may raise its soft limit up to it.
    Child processes inherit the raised soft limit.
    """
    in_use = _open_descriptors()
    need = in_use + wanted + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    if soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            except (ValueError, OSError) as error:
                logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, raised, error)
            else:
                logger.info("raised the open-file limit from %d to %d for up to %d HTTP connections",
                            soft, raised, wanted)
                soft = raised
    room = soft - in_use - FD_RESERVE
    if room >= wanted:
        return wanted
    limit = max(room, _MIN_CONNECTIONS)
    logger.warning("the open-file limit (%d, hard limit %s) leaves room for %d HTTP connections instead of %d: "
                   "raise it (ulimit -n, LimitNOFILE= in a systemd unit)", soft,
                   "unlimited" if hard == resource.RLIM_INFINITY else hard, limit, wanted)
    return limit


def _open_descriptors() -> int:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory))
        except OSError:
            continue
    return 64  # no way to count here: assume a few dozen
