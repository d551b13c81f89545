"""WorkerManager: the public API for steering workers, wherever they run.

Nothing here spawns or signals a process.  Commands travel over the command
bus: stop, restart, pause and resume go to the worker itself (a queue per
worker, which it drains and applies in the order sent), and a start request
goes to the inbox of the supervisor that is to run the new worker (it spawns
it on its own host).  What the manager reports comes from
the ledger's workers table, where workers keep their rows and heartbeats.

Example::

    manager = WorkerManager(load_settings())
    worker_id = manager.start_worker("emails", {"tries": 5, "timeout": 120})
    manager.pause_worker(worker_id)
    manager.resume_worker(worker_id)
    manager.restart_worker(worker_id)  # a fresh process takes its place
    manager.stop_worker(worker_id)     # gone for good
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import peewee
import psutil

from . import store
from .bus import COMMAND_TTL, CommandBus, WorkerCommand, open_bus, supervisor_inbox_key, worker_command_key
from .clock import now_ms, to_ms
from .config import Settings
from .errors import BusError, UnknownWorker, WorkerError, WorkerGone
from .models import Job, Worker
from .pool import check_options, check_queues
from .records import clean_stale_workers
from .rescue import Rescuer
from .statuses import WorkerStatus

__all__ = ["WorkerManager", "START_REQUEST_TTL"]

logger = logging.getLogger(__name__)

#: Seconds a start request waits in a supervisor's inbox before it lapses.
START_REQUEST_TTL = 300
#: Seconds the cleanup of stale workers waits for the app to import (to find its broker).
APP_LOAD_WAIT = 60.0

_GONE = (WorkerStatus.STOPPED, WorkerStatus.LOST, WorkerStatus.CRASHLOOPING)


class WorkerManager:
    """Start, stop, restart, pause, resume and list workers (as Horizon's WorkerManager does).

    ``settings`` names the database, the bus and the supervisors.  ``bus``
    and ``database`` may be given ready-made (the web app shares its own);
    otherwise they are opened on first use.  Errors: UnknownWorker for an id
    no row has, WorkerGone for a worker that has stopped or was lost,
    WorkerError for a bad request, BusError when the bus is unreachable.
    """

    def __init__(
        self, settings: Settings, *, bus: CommandBus | None = None, database: peewee.Database | None = None
    ) -> None:
        self.settings = settings
        self._bus = bus
        self._db = database

    # Plumbing -------------------------------------------------------------

    @property
    def bus(self) -> CommandBus:
        if self._bus is None:
            self._bus = open_bus(self.settings)
        return self._bus

    def _database(self) -> peewee.Database:
        if self._db is None:
            self._db = store.connect(self.settings.database_url)
        return self._db

    # Starting -------------------------------------------------------------

    def default_supervisor(self) -> str:
        """The supervisor a start request goes to when none is named."""
        names = sorted(self.settings.supervisors)
        if len(names) == 1:
            return names[0]
        if "default" in names:
            return "default"
        raise WorkerError(f"several supervisors are configured ({', '.join(names)}): name the one to start it")

    def start_worker(
        self,
        queue: str | Sequence[str],
        options: Mapping[str, Any] | None = None,
        *,
        supervisor: str | None = None,
    ) -> str:
        """Ask a supervisor to start a worker for ``queue``; returns the new worker's id.

        ``options`` may set tries, timeout (s), memory (MB), sleep (s), rest (s)
        and threads; the rest come from the supervisor's settings.  The
        supervisor spawns the worker on its host within a moment, or, when it
        already runs ``max_processes`` workers, marks the row stopped saying
        why.  When the bus cannot take the request, BusError is raised and
        no row is left behind.
        """
        queues = check_queues(queue)
        checked = check_options(options)
        name = supervisor if supervisor is not None else self.default_supervisor()
        if name not in self.settings.supervisors:
            known = ", ".join(sorted(self.settings.supervisors)) or "none"
            raise WorkerError(f"unknown supervisor {name!r}: the configuration declares {known}")
        worker_id = f"{name[:48]}-{secrets.token_hex(6)}"
        self._database()
        # The row exists from now on, so the id the caller got can be looked
        # up at once; the supervisor fills in host and pid when it spawns.
        Worker.insert(
            worker_id=worker_id,
            supervisor=name,
            queues=json.dumps(list(queues)),
            options=json.dumps(checked),
            status=WorkerStatus.STARTING,
            started_at=now_ms(),
        ).execute()
        request = {"worker_id": worker_id, "queues": list(queues), "options": checked}
        try:
            self.bus.push(supervisor_inbox_key(name), json.dumps(request), ttl=START_REQUEST_TTL)
        except BusError:
            # Nobody will start it: a row left "starting" would later show a
            # worker lost that never was.  If the push did get through after
            # all, the supervisor records the row again when it spawns.
            Worker.delete().where(
                (Worker.worker_id == worker_id) & (Worker.status == WorkerStatus.STARTING) & Worker.pid.is_null()
            ).execute()
            raise
        logger.info("asked supervisor %s to start worker %s for %s", name, worker_id, ", ".join(queues))
        return worker_id

    # Steering -------------------------------------------------------------

    def stop_worker(self, worker_id: str) -> None:
        """Ask the worker to finish its jobs in hand and exit for good.

        Its supervisor does not replace it: a pool runs one worker fewer,
        below ``min_processes`` if need be, until :meth:`start_worker` asks
        for one (or the supervisor is restarted).
        """
        self._command(worker_id, WorkerCommand.STOP)

    def restart_worker(self, worker_id: str) -> None:
        """Ask the worker to finish its jobs in hand and exit, for its supervisor to start a fresh process at once.

        The new process has the same queues and limits, a new id and pid,
        and the app's code loaded anew; it starts running (not paused).
        A worker without a supervisor exits with code 65, for whatever runs it.
        """
        self._command(worker_id, WorkerCommand.RESTART)

    def pause_worker(self, worker_id: str) -> None:
        """Ask the worker to stop taking messages and give back those it holds."""
        self._command(worker_id, WorkerCommand.PAUSE)

    def resume_worker(self, worker_id: str) -> None:
        """Ask a paused worker to take messages again."""
        self._command(worker_id, WorkerCommand.RESUME)

    def _command(self, worker_id: str, command: WorkerCommand) -> None:
        self._database()
        row = Worker.get_or_none(Worker.worker_id == worker_id)
        if row is None:
            raise UnknownWorker(f"unknown worker {worker_id!r}: no worker with that id is recorded")
        if row.status in _GONE:
            raise WorkerGone(f"worker {worker_id!r} is {row.status}: it cannot {command.value}")
        self.bus.push(worker_command_key(worker_id), command.value, ttl=COMMAND_TTL)
        logger.info("sent %s to worker %s", command.value, worker_id)

    def terminate_all_workers(self) -> int:
        """Ask every live worker, on every host, to finish its jobs and exit for a fresh process.

        Each gets the ``restart`` command: supervisors replace every one of
        them with a process that loads the app's code anew (a rolling
        restart, after a deploy).  Returns how many workers were asked.
        """
        self._database()
        ids = [row.worker_id for row in Worker.select(Worker.worker_id).where(Worker.status.in_(WorkerStatus.ALIVE))]
        for worker_id in ids:
            self.bus.push(worker_command_key(worker_id), WorkerCommand.RESTART.value, ttl=COMMAND_TTL)
        logger.info("asked %d workers to restart", len(ids))
        return len(ids)

    # Looking --------------------------------------------------------------

    def get_running_workers(self) -> list[Worker]:
        """Workers said to be alive (starting, running, paused or stopping), by supervisor."""
        self._database()
        return list(
            Worker.select()
            .where(Worker.status.in_(WorkerStatus.ALIVE))
            .order_by(Worker.supervisor, Worker.worker_id)
        )

    def get_all_workers(self) -> list[Worker]:
        """Every worker record, newest first."""
        self._database()
        return list(Worker.select().order_by(Worker.started_at.desc(nulls="LAST"), Worker.worker_id))

    def is_worker_running(self, worker_id: str) -> bool:
        """Alive by its row and its heartbeat (and, on this host, its process exists)."""
        self._database()
        row = Worker.get_or_none(Worker.worker_id == worker_id)
        if row is None or row.status not in WorkerStatus.ALIVE or row.last_heartbeat is None:
            return False
        if now_ms() - (to_ms(row.last_heartbeat) or 0) > self.settings.heartbeat_timeout * 1000:
            return False
        if row.hostname == self.settings.hostname and row.pid:
            return _process_alive(row.pid)
        return True

    def cleanup_stale_workers(self, threshold: float = 60) -> int:
        """Mark lost the workers silent for ``threshold`` s, and their jobs; returns how many.

        The messages those workers held go back to their queues at once (the
        app's broker is imported for it), as a supervisor does it: see
        :mod:`watchtower.rescue`.

        Run it with a ledger that has been up for a while: right after an
        outage the workers' heartbeats are old because they could not write
        them.  A worker judged lost that is alive gets its row back with its
        next heartbeat, and its jobs their lost marks undone as it finishes
        them (see :func:`watchtower.records.clean_stale_workers`).
        """
        self._database()
        rescuers: list[Rescuer] = []

        def rescue(row: Worker, jobs: list[Job]) -> None:
            if not rescuers:  # the app is imported only if something is stale
                rescuers.append(Rescuer(app=self.settings.app, max_lost=self.settings.max_lost))
            rescuers[0].broker(wait=APP_LOAD_WAIT)
            rescuers[0].rescue_stale(row, jobs, threshold=threshold, hostname=self.settings.hostname)

        return clean_stale_workers(threshold, rescue=rescue)


def _process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
