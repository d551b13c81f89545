"""What a supervisor serves: its multiprocess metrics directory, and the API with /metrics over HTTP.

:meth:`SupervisorServer.start`, before the supervisor starts any worker:

1. opens the multiprocess directory (``metrics_dir``, or a fresh temporary
   one), which starts empty and stays locked to this supervisor; the
   workers get :meth:`env` so that they count into it;
2. makes the supervisor's restart series at 0;
3. serves, on ``http.host:http.port``, the whole control API (which answers
   ``/metrics`` at the root too, counting this supervisor's workers), unless
   the bind goes beyond loopback without a token: then ``/metrics`` alone,
   as Prometheus scrapes it from other hosts.  A busy port raises
   :class:`~watchtower.errors.MetricsServerError`, and the directory is
   released.

While the supervisor runs, :meth:`mark_dead` is called for every worker that
exits, however it died, before its replacement starts (and
:func:`~watchtower.metric_listeners.record_restart` per restart,
:func:`~watchtower.metric_listeners.record_lost` for the jobs of a dead
worker), and :meth:`fold_producers` now and then; :meth:`stop` when it exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection

import peewee

from . import metrics, multiproc
from .config import Settings, replace
from .errors import ConfigError
from .metrics_server import MetricsServer, start_metrics_server

__all__ = ["SupervisorServer"]

logger = logging.getLogger(__name__)


class SupervisorServer:
    """A supervisor's metrics directory and HTTP server, from :meth:`start` to :meth:`stop`."""

    def __init__(self, name: str, metrics_dir: multiproc.MultiprocessDir, server: MetricsServer, *,
                 api_url: str | None, api_refusal: str | None) -> None:
        self.name = name
        self.metrics_dir = metrics_dir
        self.server = server
        #: The API's address (ending in its prefix and /), or None when only /metrics is served.
        self.api_url = api_url
        #: Why the API is not served (a non-loopback bind without a token), or None.
        self.api_refusal = api_refusal

    @classmethod
    def start(cls, settings: Settings, *, name: str, database: peewee.Database | None) -> SupervisorServer:
        """Open the directory and serve (see the module doc); ``database``: the supervisor's ledger."""
        held = multiproc.open_multiprocess_dir(settings)
        metrics.declare_supervisor(name)
        served = replace(settings, metrics_dir=os.fspath(held))
        try:
            from .web import create_app
            from .web.auth import check_bind

            api = None
            refusal = None
            try:
                check_bind(served)
                api = create_app(served, database=database, supervisor=name)
            except ConfigError as error:
                logger.warning("supervisor %s serves /metrics only: %s", name, error)
                refusal = str(error)
            server = start_metrics_server(served, supervisor=name, app=api)
            api_url = None
            if api is not None:
                from .web.app import normalize_prefix

                api_url = f"{server.base_url}{normalize_prefix(settings.http_prefix)}/"
        except BaseException:
            held.release()
            raise
        return cls(name, held, server, api_url=api_url, api_refusal=refusal)

    @property
    def metrics_url(self) -> str:
        """Where /metrics is served."""
        return self.server.url

    def env(self) -> dict[str, str]:
        """What a worker's environment needs to count into the directory."""
        return self.metrics_dir.env()

    def mark_dead(self, pid: int) -> None:
        """A worker exited, however: its live gauges go, its counters are kept."""
        multiproc.mark_process_dead(pid, self.metrics_dir.path)

    def fold_producers(self, skip: Collection[int]) -> None:
        """Fold the metric files of exited processes that were not ours (producers sharing metrics_dir)."""
        try:
            folded = multiproc.fold_dead_processes(self.metrics_dir.path, skip=skip)
        except Exception:
            logger.exception("supervisor %s cannot fold the metric files of exited processes", self.name)
            return
        if folded:
            logger.debug("supervisor %s folded the metric files of %d exited processes", self.name, folded)

    def stop(self) -> None:
        """Stop serving, then give the directory up."""
        self.server.stop()
        self.metrics_dir.release()
