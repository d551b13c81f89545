"""The overview routes: the dashboard's poll, health, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

import copy
import json
import logging
from importlib import resources
from typing import Any

import falcon

from ..errors import DatabaseUnavailable, WatchtowerError
from ..models import Job, database
from ..multiproc import read_metrics
from ..options import WORKER_OPTIONS
from ..recorder import refusals
from .context import Services
from .jobs import SUMMARY_COLUMNS, job_summary
from .workers import list_workers

__all__ = ["PollResource", "HealthResource", "MetricsResource", "OpenApiResource", "openapi_document"]

logger = logging.getLogger(__name__)

#: Jobs in the poll's ``recentJobs``.
RECENT_JOBS = 20


class PollResource:
    """``GET /api/poll``: ``{stats, recentJobs, workers}``, what a dashboard refreshes."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.services.ledger()
        recent = Job.select(*SUMMARY_COLUMNS).order_by(Job.id.desc()).limit(RECENT_JOBS)
        resp.media = {
            "stats": self.services.stats(),
            "recentJobs": [job_summary(job) for job in recent],
            "workers": list_workers(alive=True),
        }


class HealthResource:
    """``GET /health``: whether the ledger's database and the command bus answer, and the ledger is written (no auth).

    ``recorder`` is not ok while the database refuses some process's ledger
    writes for a reason that retrying cannot fix: a recorder of this process,
    or a worker process counted in the metrics directory (a supervisor's).
    """

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = {"database": self._database(), "bus": self._bus(), "recorder": self._recorder()}
        healthy = all(check["ok"] for check in checks.values())
        resp.status = falcon.HTTP_200 if healthy else falcon.HTTP_503
        resp.media = {"status": "ok" if healthy else "unavailable", **checks}

    def _database(self) -> dict[str, Any]:
        try:
            self.services.ledger()
            database.execute_sql("SELECT 1").fetchall()
        except Exception as error:  # any driver error means "does not answer"
            self.services.close_connections()
            return {"ok": False, "error": _reason(error)}
        return {"ok": True}

    def _bus(self) -> dict[str, Any]:
        try:
            self.services.bus().ping()
        except Exception as error:
            return {"ok": False, "error": _reason(error)}
        return {"ok": True}


    def _recorder(self) -> dict[str, Any]:
        causes = refusals()
        refusing = len(causes)
        directory = self.services.settings.metrics_dir
        if directory:
            try:
                refusing = max(refusing, _refusing_processes(directory))
            except OSError as unreadable:
                logger.warning("/health cannot read the metrics directory %s: %s", directory, unreadable)
        if not refusing:
            return {"ok": True}
        error = (f"the ledger database refuses the writes of {refusing} process(es) for a reason that retrying "
                 f"cannot fix; their logs say why")
        if causes:
            error += f" (here: {causes[0]})"
        return {"ok": False, "error": error}


def _refusing_processes(directory: str) -> int:
    for family in read_metrics(directory):
        if family.name == "watchtower_recorder_refused":
            return int(sum(sample.value for sample in family.samples))
    return 0


def _reason(error: Exception) -> str:
    if isinstance(error, WatchtowerError):
        return str(error)
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]


class MetricsResource:
    """``GET /metrics``: the Prometheus text exposition (no auth)."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.services.ledger()  # the ledger's tables, for the values read from them
        except DatabaseUnavailable:
            pass  # the exposition leaves those values out and says so in its log
        body, content_type = self.services.exposition()
        resp.data = body
        resp.content_type = content_type


_DOCUMENT: dict[str, Any] | None = None


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document kept beside this module (``openapi.json``), parsed once.

    A start request's worker options are not written there: they are added
    from :data:`watchtower.options.WORKER_OPTIONS`, where each option's
    type, range and meaning are declared.
    """
    global _DOCUMENT
    if _DOCUMENT is None:
        text = resources.files(__package__).joinpath("openapi.json").read_text(encoding="utf-8")
        document = json.loads(text)
        start = document["components"]["schemas"]["StartRequest"]["properties"]
        for name, option in WORKER_OPTIONS.items():
            start[name] = {
                "type": "integer" if option.whole else "number",
                "minimum": option.smallest,
                "maximum": option.largest,
                "description": option.help + (f" ({option.unit})" if option.unit else "")
                + "; absent: the supervisor's setting",
            }
        _DOCUMENT = document
    return _DOCUMENT


class OpenApiResource:
    """``GET /openapi.json``, completed with this deployment's facts.

    The server URL is where this app answers (its mount point and prefix),
    and a start request's ``supervisor`` lists the configured supervisors.
    """

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        document = copy.deepcopy(openapi_document())
        document["servers"] = [{"url": req.context.base_path or "/"}]
        supervisor = document["components"]["schemas"]["StartRequest"]["properties"]["supervisor"]
        supervisor["enum"] = [*sorted(self.services.settings.supervisors), None]
        resp.media = document
