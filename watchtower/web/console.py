"""The console: HTML pages to look at jobs and workers and act on them, beside the JSON API.

The pages are served by the API's own app, under its prefix and mount
(``/watchtower/console``; a browser that opens ``/watchtower/`` is sent
there), rendered on the server from the Jinja2 templates beside this module
(autoescaped), with one stylesheet and one small script and nothing to build:

- ``/console``: the dashboard (job counts by status, the last hour's
  throughput and failures, workers by status, queue depths, recent
  failures), refreshing itself every few seconds;
- ``/console/jobs`` and ``/console/failed``: the API's lists, with the same
  filters, search and cursor paging (:func:`watchtower.web.jobs.list_jobs`);
- ``/console/jobs/{id}``: one job, its message redacted as the API shows it,
  its traceback and links to the retried / retried-from jobs;
- ``/console/workers``: workers by supervisor and host.

Actions are forms posted to ``/console/...``: retry or delete a failed job,
retry every failed job a filter selects (after a page that counts them),
pause / resume / stop (and restart, where the API has it) a worker, start
one.  Each runs the API's own code and answers with a page saying what
happened, or the API's error text; with the script, the answer appears in
the page instead and the live parts refresh.  A page asked for with the
header ``X-Watchtower-Fragment: live`` (or ``outcome``) answers that part of
itself only: the script refreshes with it.

Who gets in is :mod:`watchtower.web.auth`'s decision (a login page trades
the token for a session cookie); the forms carry the CSRF token of
:mod:`watchtower.web.session`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import falcon
import jinja2

from ..errors import AppImportError
from ..options import WORKER_OPTIONS
from ..scrape import queue_depths_for
from ..statuses import JobStatus, WorkerStatus
from . import jobs, params, session, workers
from .auth import CONSOLE, CONSOLE_LOGIN, wants_html
from .context import Services

__all__ = ["Console", "ConsoleEntry", "add_console_routes", "FRAGMENT_HEADER", "MAX_BULK_RETRY", "REFRESH_SECONDS"]

logger = logging.getLogger(__name__)

#: The request header that asks for one part of a page (see the module's docstring).
FRAGMENT_HEADER = "X-Watchtower-Fragment"
#: Seconds between two refreshes of a live page.
REFRESH_SECONDS = 3
#: Failed jobs one press of the bulk retry sends at most (a request stays short).
MAX_BULK_RETRY = 500
#: How far the bulk retry's page counts the failed jobs a filter selects ("more than" past it).
BULK_COUNT_UP_TO = 1000
#: Seconds before an app that could not be imported is tried again for the dashboard's queue depths.
BROKER_RETRY_SECONDS = 60.0
#: The console's static files.
STATIC_FILES = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}

# Every page: no caching (the data is live), no framing (the buttons act),
# no script or style from anywhere but the console itself.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class ConsoleEntry:
    """Falcon middleware: a browser asking for the prefix's root is sent to the dashboard.

    Any other client gets what it got before the console existed (the API
    has nothing at the root: a JSON 404, or 401 without the token).
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path == "/" and req.method in ("GET", "HEAD") and wants_html(req):
            raise falcon.HTTPSeeOther(getattr(req.context, "base_path", "") + CONSOLE)


def _parse_time(value: datetime | str | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def _ago(value: datetime | str | None) -> str:
    moment = _parse_time(value)
    if moment is None:
        return "–"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if abs(seconds) < 1:
        return "just now"
    return "in " + _span(-seconds) if seconds < 0 else _span(seconds) + " ago"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return _span(value)


def _megabytes(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f} MB"


def _query(values: dict[str, Any]) -> str:
    """``?a=1&b=2`` of the values that are set, or ``""``."""
    kept = {name: value for name, value in values.items() if value not in (None, "")}
    return "?" + urlencode(kept) if kept else ""


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


class Console:
    """The console's templates and how a page, a part of one or an error is answered."""

    def __init__(self, services: Services, *, signer: session.SessionSigner | None, hook: bool) -> None:
        self.services = services
        #: Issues session cookies at login (None without a token).
        self.signer = signer
        #: Whether the host application's authorize hook decides who gets in.
        self.hook = hook
        self.environment = jinja2.Environment(
            loader=jinja2.PackageLoader(__package__, "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.environment.filters.update(
            ago=_ago,
            when=lambda value: (m := _parse_time(value)) and m.strftime("%Y-%m-%d %H:%M:%S UTC"),
            clock=lambda value: value.strftime("%H:%M"),
            iso=lambda value: jobs.iso(_parse_time(value)),
            seconds=_seconds,
            megabytes=_megabytes,
            number=lambda value: f"{int(value or 0):,}",
            query=_query,
            pretty=_pretty,
        )
        self._broker_refusal: tuple[float, str] | None = None
        grafana = services.settings.grafana_url
        self.grafana = grafana.rstrip("/") if grafana else None
        self._versions = {
            name: hashlib.sha256(self.static_file(name)).hexdigest()[:12] for name in STATIC_FILES
        }

    def broker_depths(self) -> tuple[dict[str, dict[str, int]] | None, str | None]:
        """The broker's messages per queue and state, or None and why not (None when there is no broker to ask).

        An app that cannot be imported is tried again a minute later, not on every refresh.
        """
        if not self.services.broker_known():
            return None, None
        now = time.monotonic()
        if self._broker_refusal is not None and now - self._broker_refusal[0] < BROKER_RETRY_SECONDS:
            return None, self._broker_refusal[1]
        try:
            broker = self.services.broker()
        except AppImportError as error:
            self._broker_refusal = (now, f"the app's broker cannot be loaded: {error}")
            return None, self._broker_refusal[1]
        reader = queue_depths_for(broker)
        if reader is None:
            return None, f"a {type(broker).__name__} does not tell its queue depths"
        try:
            return reader.depths(), None
        except Exception as error:  # any client error means the broker did not answer
            logger.warning("the console could not read the broker's queue depths: %s", error)
            return None, f"the broker did not answer: {type(error).__name__}: {' '.join(str(error).split())[:200]}"

    @staticmethod
    def static_file(name: str) -> bytes:
        return resources.files(__package__).joinpath("static", name).read_bytes()

    def context(self, req: falcon.Request, resp: falcon.Response) -> dict[str, Any]:
        """What every template sees: where the console is, the CSRF token, who let the user in."""
        base = getattr(req.context, "base_path", "")
        console = base + CONSOLE
        token = session.csrf_cookie(req)
        if token is None:
            token = session.new_csrf_token()
            session.set_cookie(req, resp, session.CSRF_COOKIE, token, path=console, max_age=None)
        via = getattr(req.context, "console_via", None)
        return {
            "console": console,
            "here": base + req.path + (f"?{req.query_string}" if req.query_string else ""),
            "csrf": token,
            "via": via,
            "nav": via is not None,
            "nav_items": [
                ("dashboard", "Dashboard", console),
                ("jobs", "Jobs", console + "/jobs"),
                ("failed", "Failed", console + "/failed"),
                ("workers", "Workers", console + "/workers"),
            ],
            "current": None,
            "grafana": self.grafana,
            "static": lambda name: f"{console}/static/{name}?v={self._versions[name]}",
            "refresh": REFRESH_SECONDS,
            "now": datetime.now(UTC),
        }

    def render(self, req: falcon.Request, resp: falcon.Response, name: str, *,
               status: str = falcon.HTTP_200, **values: Any) -> None:
        """Answer with template ``name``, or only the block the fragment header asks for."""
        template = self.environment.get_template(name)
        context = {**self.context(req, resp), **values}
        fragment = req.get_header(FRAGMENT_HEADER)
        if fragment and fragment in template.blocks:
            body = "".join(template.blocks[fragment](template.new_context(context)))
        else:
            body = template.render(context)
        resp.status = status
        resp.content_type = "text/html; charset=utf-8"
        resp.text = body
        resp.set_headers(_PAGE_HEADERS)

    def render_error(self, req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError,
                     title: str, description: str) -> None:
        """An error of a console request as a page (or its outcome part) with the API's text."""
        login = None
        if isinstance(error, falcon.HTTPUnauthorized):
            login = getattr(req.context, "base_path", "") + CONSOLE_LOGIN
        status = str(error.status)  # Falcon's errors carry "404 Not Found" (an int for custom codes)
        self.render(req, resp, "error.html", status=status, title=title, description=description,
                    status_code=status, login=login)
        retry_after = dict(error.headers or {}).get("Retry-After")
        if retry_after is not None:
            resp.set_header("Retry-After", retry_after)

    def outcome(self, req: falcon.Request, resp: falcon.Response, title: str, message: str, *,
                links: list[tuple[str, str]] | None = None, kind: str = "ok") -> None:
        """Say what an action did, with links onwards and back to the page the form was on."""
        back = _next_page(req)
        links = list(links or [])
        if back:
            links.append(("Back", back))
        self.render(req, resp, "outcome.html", title=title, message=message, links=links, kind=kind, back=back)


def _console_page(req: falcon.Request, target: str | None) -> str | None:
    """``target`` if it is a page of this console, else None (a form never sends the browser to another site)."""
    console = getattr(req.context, "base_path", "") + CONSOLE
    if not target or "//" in target or "\\" in target:
        return None
    if target == console or target.startswith((console + "/", console + "?")):
        return target
    return None


def _next_page(req: falcon.Request) -> str | None:
    """The page the form came from (its ``next`` field), if it is one of this console's."""
    return _console_page(req, getattr(req.context, "form", {}).get("next"))


class _Page:
    """A console resource: the services and the console's renderer."""

    query_params: tuple[str, ...] = ()

    def __init__(self, console: Console) -> None:
        self.console = console
        self.services = console.services


class DashboardPage(_Page):
    """``GET /console``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.services.ledger()
        collector = self.services.collector()
        stats = collector.get_stats()
        minutes = collector.get_recent_throughput(60)
        recent = jobs.list_jobs(self.services, status=JobStatus.FAILED, queue=None, search=None, page=1, per_page=5)
        in_broker, broker_note = self.console.broker_depths()
        depths = {depth["queue"]: depth for depth in collector.get_queue_depths()}
        for queue in in_broker or {}:
            depths.setdefault(queue, {"queue": queue, "pending": 0, "processing": 0})
        self.console.render(
            req, resp, "dashboard.html", current="dashboard",
            stats=stats, statuses=JobStatus.ALL, minutes=minutes,
            peak=max((minute["total"] for minute in minutes), default=0),
            workers=collector.get_worker_stats(), worker_statuses=WorkerStatus.ALL,
            depths=[depths[queue] for queue in sorted(depths)], in_broker=in_broker, broker_note=broker_note,
            recent_failed=recent["data"],
        )


def _queue_names(services: Services) -> list[str]:
    """The queues the ledger knows (from the small counts table), for the filters' suggestions."""
    return [depth["queue"] for depth in services.collector().get_queue_depths()]


class JobsPage(_Page):
    """``GET /console/jobs?status=&queue=&search=&before=`` (and ``/console/failed``, without status)."""

    query_params: tuple[str, ...] = ("status", "queue", "search", "before")

    def __init__(self, console: Console, *, failed: bool = False) -> None:
        super().__init__(console)
        self.failed = failed
        if failed:
            self.query_params = ("queue", "search", "before")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = JobStatus.FAILED if self.failed else params.query_choice(req, "status", JobStatus.ALL)
        queue = params.query_queue(req)
        search = params.query_search(req, "search", max_length=jobs.MAX_SEARCH)
        before = params.query_cursor(req, "before")
        filters = {"status": None if self.failed else status, "queue": queue, "search": search, "before": before}
        listing = jobs.list_jobs(self.services, status=status, queue=queue, search=search,
                                 page=1, per_page=jobs.PER_PAGE, before=before)
        page = "failed" if self.failed else "jobs"
        heading = "Failed jobs" if self.failed else (f"Jobs: {status}" if status else "Jobs")
        self.console.render(
            req, resp, "jobs.html", current=page, page=page, heading=heading, listing=listing,
            filters=filters, statuses=JobStatus.ALL, queues=_queue_names(self.services),
            caption=f"{heading}, newest first" + (" (older pages follow the cursor)" if before else ""),
        )


class JobPage(_Page):
    """``GET /console/jobs/{id}``: the API's record of one job."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        job = jobs.job_detail(jobs.find_job(self.services, job_id), self.services)
        self.console.render(req, resp, "job.html", current="failed" if job["status"] == "failed" else "jobs",
                            job=job, finished=JobStatus.FINISHED)


class WorkersPage(_Page):
    """``GET /console/workers?view=all``: workers by supervisor and host (live ones unless ``view=all``)."""

    query_params = ("view",)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        view = params.query_choice(req, "view", ("alive", "all")) or "alive"
        self.services.ledger()
        records = workers.list_workers(alive=view == "alive")
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in records:
            groups.setdefault((record["supervisor"] or "", record["hostname"] or ""), []).append(record)
        settings = self.services.settings
        self.console.render(
            req, resp, "workers.html", current="workers", view=view,
            groups=[{"supervisor": supervisor, "hostname": host, "workers": rows}
                    for (supervisor, host), rows in sorted(groups.items())],
            alive=WorkerStatus.ALIVE, commands=workers.COMMANDS, queues=_queue_names(self.services),
            supervisors=sorted(settings.supervisors), default_supervisor=_default_supervisor(self.services),
            worker_options=list(WORKER_OPTIONS.values()),
        )


def _default_supervisor(services: Services) -> str | None:
    names = sorted(services.settings.supervisors)
    return "default" if "default" in names else (names[0] if names else None)


class LoginPage(_Page):
    """``GET /console/login?next=``: the token form; ``POST``: trade the token for a session cookie."""

    query_params = ("next",)

    def _mode(self) -> str:
        if self.console.signer is not None:
            return "token"
        return "hook" if self.console.hook else "loopback"

    def _form(self, req: falcon.Request, resp: falcon.Response, target: str | None, *, wrong: bool = False) -> None:
        self.console.render(req, resp, "login.html", status=falcon.HTTP_401 if wrong else falcon.HTTP_200,
                            mode=self._mode(), wrong=wrong, next=target or "",
                            session_hours=session.SESSION_SECONDS // 3600)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._form(req, resp, _console_page(req, req.get_param("next")))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        form = req.context.form
        target = _console_page(req, form.get("next"))
        token = self.services.settings.http_token
        if self.console.signer is None or token is None:
            self._form(req, resp, target)  # nothing to log in to: the page says why
            return
        given = form.get("token", "").strip().encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, token.encode("utf-8")):
            logger.warning("console login refused for %s: wrong token", req.remote_addr)
            self._form(req, resp, target, wrong=True)
            return
        console = getattr(req.context, "base_path", "") + CONSOLE
        session.set_cookie(req, resp, session.SESSION_COOKIE, self.console.signer.issue(), path=console,
                           max_age=session.SESSION_SECONDS)
        raise falcon.HTTPSeeOther(target or console)


class LogoutAction(_Page):
    """``POST /console/logout``: forget the session cookie."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        console = getattr(req.context, "base_path", "") + CONSOLE
        session.clear_cookie(req, resp, session.SESSION_COOKIE, path=console)
        raise falcon.HTTPSeeOther(console + "/login")


class RetryAction(_Page):
    """``POST /console/failed/{id}/retry``: the API's retry (:func:`watchtower.web.jobs.retry_job`)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        answer = jobs.retry_job(self.services, job_id)
        console = getattr(req.context, "base_path", "") + CONSOLE
        self.console.outcome(
            req, resp, "Retried",
            f"Job {answer['retried_from']} was sent again to queue {answer['queue']} as job {answer['id']}.",
            links=[("Open the new job", f"{console}/jobs/{answer['id']}")],
        )


class DeleteAction(_Page):
    """``POST /console/failed/{id}/delete``: the API's ``DELETE /failed/{id}``."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        answer = jobs.delete_failed(self.services, job_id)
        self.console.outcome(req, resp, "Deleted", f"The ledger no longer holds failed job {answer['id']}.")


class BulkRetryPage(_Page):
    """``GET /console/failed/retry?queue=&search=``: how many failed jobs a filter selects; ``POST``: retry them.

    The selection is the failed list's (queue and search), less the jobs
    retried already; the page counts it up to ``BULK_COUNT_UP_TO``, and one
    POST retries the ``MAX_BULK_RETRY`` oldest.
    """

    query_params = ("queue", "search")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        filters = {"queue": params.query_queue(req),
                   "search": params.query_search(req, "search", max_length=jobs.MAX_SEARCH)}
        selection = jobs.retryable_failed(self.services, limit=0, count_up_to=BULK_COUNT_UP_TO, **filters)
        self.console.render(req, resp, "bulk_retry.html", current="failed", filters=filters,
                            count=selection.matched, more=selection.more, complete=selection.complete,
                            window=jobs.SEARCH_WINDOW, limit=MAX_BULK_RETRY)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        from ..errors import JobConflict

        form = req.context.form
        queue = form.get("queue") or None
        if queue is not None:
            params.check_queue_name(queue)
        search = form.get("search") or None
        if search is not None and len(search) > jobs.MAX_SEARCH:
            raise params.bad_request(f"the search is {len(search)} characters long; at most {jobs.MAX_SEARCH}")
        selection = jobs.retryable_failed(self.services, queue=queue, search=search, limit=MAX_BULK_RETRY,
                                          count_up_to=BULK_COUNT_UP_TO)
        retried, refused = 0, []
        for message_id in selection.ids:
            try:
                jobs.retry_job(self.services, message_id)
            except JobConflict as conflict:  # retried or deleted by someone else meanwhile
                refused.append(str(conflict))
            else:
                retried += 1
        left = selection.matched - len(selection.ids)
        plural = "s" if retried != 1 else ""
        message = f"{retried} failed job{plural} sent again as new job{plural}."
        if refused:
            message += f" {len(refused)} could not be: {refused[0]}" + (" (and others)" if len(refused) > 1 else "")
        if left > 0 or selection.more:
            message += f" {'More than ' if selection.more else ''}{left:,} more match: press Retry again for them."
        logger.info("console bulk retry (queue %s, search %r): %d retried, %d refused", queue, search, retried,
                    len(refused))
        self.console.outcome(req, resp, "Retried", message, kind="ok" if not refused else "error")


class WorkerCommandAction(_Page):
    """``POST /console/workers/{id}/{command}``: the API's worker commands (``workers.COMMANDS``)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response, worker_id: str, command: str) -> None:
        wid = workers.send_command(self.services, worker_id, command)
        self.console.outcome(req, resp, "Sent", f"Worker {wid} was told to {command}; it does within about a second.")


class StartWorkerAction(_Page):
    """``POST /console/workers/start``: the API's start request, from a form (queue, supervisor, threads...)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body: dict[str, Any] = {}
        for name, value in req.context.form.items():
            if name in (session.CSRF_FIELD, "next") or value == "":
                continue
            body[name] = _number(value) if name in WORKER_OPTIONS else value
        queue, options, supervisor = workers.start_request(body)
        manager = self.services.manager()
        supervisor = supervisor or manager.default_supervisor()
        worker_id = manager.start_worker(queue, options, supervisor=supervisor)
        self.console.outcome(req, resp, "Requested",
                             f"Supervisor {supervisor} was asked for worker {worker_id} on queue {queue}; "
                             "it appears here once the supervisor has started it.")


def _number(text: str) -> Any:
    """A form field as the JSON number the API's check expects (the text itself if it is none)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class StaticFile:
    """``GET /console/static/{name}``: the stylesheet and the script (open to all, cached by version)."""

    query_params = ("v",)

    def __init__(self, console: Console) -> None:
        self.console = console

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        if name not in STATIC_FILES:
            raise falcon.HTTPNotFound(title="Not Found", description=f"the console has no file {name[:64]!r}")
        resp.data = self.console.static_file(name)
        resp.content_type = STATIC_FILES[name]
        resp.cache_control = ["public", "max-age=86400"] if req.get_param("v") else ["no-cache"]
        resp.set_header("X-Content-Type-Options", "nosniff")


def add_console_routes(app: falcon.App, console: Console) -> None:
    """The console's pages and actions on ``app`` (under the app's prefix)."""
    app.add_route(CONSOLE, DashboardPage(console))
    app.add_route(CONSOLE + "/login", LoginPage(console))
    app.add_route(CONSOLE + "/logout", LogoutAction(console))
    app.add_route(CONSOLE + "/jobs", JobsPage(console))
    app.add_route(CONSOLE + "/jobs/{job_id}", JobPage(console))
    app.add_route(CONSOLE + "/failed", JobsPage(console, failed=True))
    app.add_route(CONSOLE + "/failed/retry", BulkRetryPage(console))
    app.add_route(CONSOLE + "/failed/{job_id}/retry", RetryAction(console))
    app.add_route(CONSOLE + "/failed/{job_id}/delete", DeleteAction(console))
    app.add_route(CONSOLE + "/workers", WorkersPage(console))
    app.add_route(CONSOLE + "/workers/start", StartWorkerAction(console))
    app.add_route(CONSOLE + "/workers/{worker_id}/{command}", WorkerCommandAction(console))
    app.add_route(CONSOLE + "/static/{name}", StaticFile(console))
