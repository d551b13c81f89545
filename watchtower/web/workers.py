"""The worker routes: list workers, ask for a new one, stop, restart, pause or resume one.

The API never runs a process itself: a start request goes to a
supervisor's inbox on the command bus (the API answers at once, 202, with
the new worker's id; the supervisor spawns it), and stop / restart / pause /
resume are commands queued for the worker on the bus, which it applies in
the order sent.  Both go through the WorkerManager.
"""

from __future__ import annotations

import json
import re
from typing import Any

import falcon

from ..options import WORKER_OPTIONS
from ..statuses import WorkerStatus
from ..views import list_workers, worker_record, worker_rows
from . import params
from .context import Services

__all__ = [
    "worker_rows",
    "list_workers",
    "worker_record",
    "WorkersResource",
    "StartWorkerResource",
    "WorkerCommandResource",
]

_SUPERVISOR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

COMMANDS = ("stop", "restart", "pause", "resume")


class WorkersResource:
    """``GET /workers?status=&supervisor=``."""

    query_params = ("status", "supervisor")

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        status = params.query_choice(req, "status", WorkerStatus.ALL)
        supervisor = req.get_param("supervisor") or None
        if supervisor is not None and not _SUPERVISOR.fullmatch(supervisor):
            raise params.bad_request(
                "parameter 'supervisor' must be a supervisor's name "
                "(letters, digits, '.', '_' and '-', at most 128 characters)"
            )
        self.services.ledger()
        resp.media = {"data": list_workers(status=status, supervisor=supervisor)}


def start_request(body: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    """The queue, options and supervisor of a start request's body, checked (422 otherwise).

    The options are the worker options of :mod:`watchtower.options`, with their ranges.
    """
    if "queue" not in body:
        raise params.unprocessable('"queue" is required: the queue the new worker consumes, such as "default"')
    queue = params.check_queue_name(body["queue"])
    supervisor = body.get("supervisor")
    if supervisor is not None and (not isinstance(supervisor, str) or not _SUPERVISOR.fullmatch(supervisor)):
        raise params.unprocessable(
            '"supervisor" must be a supervisor\'s name (letters, digits, ".", "_" and "-", at most 128 characters)'
        )
    options: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("queue", "supervisor"):
            continue
        option = WORKER_OPTIONS.get(name)
        if option is None:
            known = ", ".join(["queue", "supervisor", *WORKER_OPTIONS])
            raise params.unprocessable(f"unknown field {name[:64]!r}: a start request takes {known}")
        problem = option.problem(value)
        if problem is not None:
            raise params.unprocessable(f"{name!r} must be {problem}, not {json.dumps(value)[:40]}")
        options[name] = option.kind(value)
    return queue, options, supervisor


class StartWorkerResource:
    """``POST /workers/start`` ``{"queue": "default", "supervisor": ..., "threads": ..., ...}``."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        queue, options, supervisor = start_request(params.json_object(req))
        # The manager checks the supervisor's name against the settings
        # (WorkerError -> 422) and pushes the request to its inbox.
        manager = self.services.manager()
        supervisor = supervisor or manager.default_supervisor()
        worker_id = manager.start_worker(queue, options, supervisor=supervisor)
        resp.status = falcon.HTTP_202
        resp.media = {"id": worker_id, "queue": queue, "supervisor": supervisor, "options": options}


class WorkerCommandResource:
    """``POST /workers/{id}/stop|restart|pause|resume``."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def on_post(self, req: falcon.Request, resp: falcon.Response, worker_id: str, command: str) -> None:
        wid = send_command(self.services, worker_id, command)
        resp.status = falcon.HTTP_202
        resp.media = {"id": wid, "command": command}


def send_command(services: Services, raw_id: str, command: str) -> str:
    """Send ``command`` (one of COMMANDS, else 404) to worker ``raw_id`` through the manager; its checked id.

    The manager's UnknownWorker answers 404 and WorkerGone 409 (see the app's error handlers).
    """
    if command not in COMMANDS:
        raise falcon.HTTPNotFound(
            title="Not Found", description=f"workers take the commands {', '.join(COMMANDS)}, not {command[:32]!r}"
        )
    wid = params.worker_id(raw_id)
    getattr(services.manager(), f"{command}_worker")(wid)
    return wid
