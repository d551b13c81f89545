"""The control API as a Falcon WSGI app, made by :func:`create_app`.

Where it answers.  The routes live under ``http.prefix`` (default
``/watchtower``): ``/watchtower/api/poll``, ``/watchtower/jobs``...  A host
application mounts the app at a path of its own, with the helpers of
:mod:`watchtower.web.hosts` (Flask, Django, Starlette and FastAPI: the
``authorize`` hook then sees the host's request), werkzeug's
``DispatcherMiddleware`` or ``a2wsgi``; the mount point becomes the WSGI
``SCRIPT_NAME``.  Then:

- a mount point that already ends with the prefix counts as the prefix:
  the default app mounted at ``/watchtower`` answers
  ``/watchtower/api/poll``, not ``/watchtower/watchtower/api/poll``;
- an app built with the prefix ``""`` answers right under its mount point.

``/metrics`` is also answered outside the prefix, at the app's root, where
Prometheus looks by default.

Errors are JSON ``{"title": ..., "description": ...}``: 400/422 for bad
input, 401/403 for missing credentials, 404 for unknown ids and routes, 409
when the job's or worker's state forbids the action, 503 (with
``Retry-After``) while the database, the bus or the broker is down.
Anything else is a bug: it is logged with its traceback and answered 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import falcon
import peewee

from ..errors import (
    AppImportError,
    BrokerError,
    BusError,
    ConfigError,
    DatabaseUnavailable,
    JobConflict,
    JobNotFound,
    UnknownWorker,
    WorkerError,
    WorkerGone,
)
from .auth import Authorization, is_console
from .console import Console, ConsoleEntry, add_console_routes
from .context import Services
from .jobs import FailedJobResource, FailedJobsResource, JobResource, JobsResource, RetryResource
from .params import KnownParams
from .system import HealthResource, MetricsResource, OpenApiResource, PollResource
from .workers import StartWorkerResource, WorkerCommandResource, WorkersResource

if TYPE_CHECKING:
    import dramatiq

    from ..config import Settings
    from ..manager import WorkerManager

__all__ = ["create_app", "normalize_prefix"]

logger = logging.getLogger(__name__)

#: Seconds a client is asked to wait after a 503.
RETRY_AFTER = 5


def normalize_prefix(prefix: str) -> str:
    """``prefix`` as ``/a/b`` (or ``""``), or a ConfigError saying how to write it."""
    cleaned = prefix.strip().rstrip("/")
    if cleaned and not cleaned.startswith("/"):
        raise ConfigError(
            f"setting 'http.prefix' must start with '/' (such as /watchtower) or be empty, not {prefix!r}"
        )
    if any(part in (".", "..") for part in cleaned.split("/")) or "//" in cleaned:
        raise ConfigError(f"setting 'http.prefix' must be a plain path such as /watchtower, not {prefix!r}")
    return cleaned


def create_app(
    settings: Settings,
    *,
    authorize: Callable[[falcon.Request], bool] | None = None,
    broker: dramatiq.Broker | None = None,
    manager: WorkerManager | None = None,
    database: peewee.Database | None = None,
    supervisor: str | None = None,
) -> falcon.App:
    """The control API for ``settings`` (a :class:`~watchtower.config.Settings`).

    - ``authorize``: a host application's check, ``authorize(req) -> bool``;
      a request it accepts needs no token (see :mod:`watchtower.web.auth`);
      mounted with :mod:`watchtower.web.hosts`, it finds the host's own
      request (and session) in ``req.context.host_request``;
    - ``broker``: the Dramatiq broker that retries go to; by default the
      broker of ``settings.app``, imported on the first retry;
    - ``manager``: the :class:`~watchtower.manager.WorkerManager` for
      worker commands; by default one on the bus that ``settings`` names;
    - ``database``: the ledger, already opened with
      :func:`watchtower.store.connect`, for a host that has it open (the
      supervisor); by default the app opens ``settings.database_url``;
    - ``supervisor``: the supervisor serving this app, whose /metrics then
      counts that supervisor's workers on this host (see
      :mod:`watchtower.scrape`).

    Building the app does no I/O: a database that is down makes requests
    answer 503 until it is back, and ``/health`` says so.
    """
    prefix = normalize_prefix(settings.http_prefix)
    services = Services(settings=settings, broker=broker, manager=manager, database=database, supervisor=supervisor)
    # In this order: the prefix comes off before the token is checked
    # against the route, and unknown parameters are refused after routing.
    authorization = Authorization(
        token=settings.http_token, authorize=authorize, trusted_proxies=settings.http_trusted_proxies
    )
    console = Console(services, signer=authorization.sessions, hook=authorize is not None)
    middleware: list[Any] = [PrefixRouter(prefix), ConsoleEntry(), authorization, KnownParams()]
    app = falcon.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(lambda req, resp, error: _serialize_error(req, resp, error, console))
    _add_error_handlers(app, services)

    app.add_route("/api/poll", PollResource(services))
    app.add_route("/jobs", JobsResource(services))
    app.add_route("/jobs/{job_id}", JobResource(services))
    app.add_route("/failed", FailedJobsResource(services))
    app.add_route("/failed/{job_id}", FailedJobResource(services))
    app.add_route("/failed/{job_id}/retry", RetryResource(services))
    app.add_route("/workers", WorkersResource(services))
    app.add_route("/workers/start", StartWorkerResource(services))
    app.add_route("/workers/{worker_id}/{command}", WorkerCommandResource(services))
    app.add_route("/metrics", MetricsResource(services))
    app.add_route("/health", HealthResource(services))
    app.add_route("/openapi.json", OpenApiResource(services))
    add_console_routes(app, console)
    return app


class PrefixRouter:
    """Falcon middleware that takes the prefix off the path before routing (see the module's docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        mount = req.root_path.rstrip("/")
        path = req.path
        if not self.prefix or mount.endswith(self.prefix):
            req.context.base_path = mount
            return
        if path == self.prefix or path.startswith(self.prefix + "/"):
            req.path = path[len(self.prefix):] or "/"
            req.context.base_path = mount + self.prefix
            return
        if path == "/metrics":
            req.context.base_path = mount
            return
        raise falcon.HTTPNotFound(title="Not Found",
                                  description=f"the Watchtower API answers under {mount + self.prefix}/")


def _serialize_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError, console: Console) -> None:
    """Every error as JSON, whatever the client accepts (the API speaks JSON only); the console's as a page."""
    description = error.description
    if description is None:  # Falcon's own routing errors carry none
        if isinstance(error, falcon.HTTPMethodNotAllowed):
            allowed = dict(error.headers or {}).get("Allow", "")
            description = f"{req.method} is not allowed here; this route answers {allowed}"
        elif isinstance(error, falcon.HTTPNotFound):
            base = getattr(req.context, "base_path", "")
            description = f"nothing answers at this path; the routes are listed in {base}/openapi.json"
        else:
            description = error.title or str(error.status)
    title = error.title or str(error.status)
    if is_console(req.path):  # the console's pages and forms: a page, whatever the client accepts
        console.render_error(req, resp, error, title, description)
        return
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"title": title, "description": description}


def _where(req: falcon.Request) -> str:
    """The request's path as the client wrote it (the prefix router shortened ``req.path``)."""
    return getattr(req.context, "base_path", "") + req.path


def _answer(kind: type[falcon.HTTPError], title: str, *, warn: bool = False, **extra: Any) -> Any:
    """An error handler that answers ``kind`` with the error's own message."""

    def handle(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
        if warn:  # an outage, not a bug: one line, no traceback
            logger.warning("%s %s: %s", req.method, _where(req), error)
        raise kind(title=title, description=str(error), **extra)

    return handle


def _add_error_handlers(app: falcon.App, services: Services) -> None:
    def app_missing(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
        logger.warning("%s %s: %s", req.method, _where(req), error)
        raise falcon.HTTPServiceUnavailable(
            title="Service Unavailable", description=f"this needs the app's broker, which cannot be loaded: {error}"
        )

    def database_down(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
        # This thread's connections may be broken: drop them so that the
        # next request reconnects.
        services.close_connections()
        reason = " ".join(str(error).split()) or type(error).__name__
        logger.warning("%s %s: the ledger database failed: %s", req.method, _where(req), reason)
        raise falcon.HTTPServiceUnavailable(
            title="Service Unavailable", description=f"the ledger database is unavailable: {reason}",
            retry_after=RETRY_AFTER,
        )

    def bug(req: falcon.Request, resp: falcon.Response, error: Exception, params: Any) -> None:
        logger.error("%s %s failed", req.method, _where(req), exc_info=error)
        raise falcon.HTTPInternalServerError(
            title="Internal Server Error", description="an unexpected error; see the server's log"
        )

    app.add_error_handler(Exception, bug)
    app.add_error_handler([JobNotFound, UnknownWorker], _answer(falcon.HTTPNotFound, "Not Found"))
    app.add_error_handler([JobConflict, WorkerGone], _answer(falcon.HTTPConflict, "Conflict"))
    # Any other WorkerError is the manager refusing the request itself.
    app.add_error_handler(WorkerError, _answer(falcon.HTTPUnprocessableEntity, "Unprocessable Entity"))
    app.add_error_handler(
        [DatabaseUnavailable, BusError, BrokerError],
        _answer(falcon.HTTPServiceUnavailable, "Service Unavailable", warn=True, retry_after=RETRY_AFTER),
    )
    app.add_error_handler(AppImportError, app_missing)
    app.add_error_handler([peewee.OperationalError, peewee.InterfaceError], database_down)
