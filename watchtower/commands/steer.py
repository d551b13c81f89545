"""Steering at a terminal: ``watchtower pause|resume|stop|restart ID``, ``--supervisor NAME`` or ``--all``.

Horizon's ``pause``, ``continue`` and ``terminate``, through the
WorkerManager: each command goes over the command bus to the worker, which
applies it within about a second (a pause waits for the jobs in hand to
finish their turn).  The command says what it sent, to whom, and what it
skipped; with ``--wait`` it also waits until every worker's row shows the
result.  ``--json`` prints the same as one document::

    {"command": "pause", "workers": [ids sent], "skipped": [{"id", "status", "reason"}],
     "statuses": {id: status} (with --wait: each worker's status at the end)}

``stop`` is for good: the worker finishes its jobs in hand and exits, and
its supervisor does not replace it.  ``restart`` is the same exit with a
fresh process (new id and pid, the app's code loaded anew) started in its
place at once: its old record ends ``stopped``, which is what ``--wait``
waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from ..errors import WatchtowerError, WorkerGone
from ..models import Worker
from ..statuses import WorkerStatus
from .context import settings_from
from .output import echo_json

__all__ = ["pause", "resume", "stop", "restart"]

#: Seconds --wait waits for every worker at most.
WAIT_SECONDS = 30.0

#: Per command: the statuses a worker must have to be sent it by --supervisor
#: or --all, the status --wait waits for, and the past tense for people.
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "pause": ((WorkerStatus.STARTING, WorkerStatus.RUNNING), (WorkerStatus.PAUSED,), "paused"),
    "resume": ((WorkerStatus.PAUSED,), (WorkerStatus.RUNNING,), "resumed"),
    "stop": ((WorkerStatus.STARTING, WorkerStatus.RUNNING, WorkerStatus.PAUSED),
             (WorkerStatus.STOPPED, WorkerStatus.LOST, WorkerStatus.CRASHLOOPING), "stopped"),
    "restart": ((WorkerStatus.STARTING, WorkerStatus.RUNNING, WorkerStatus.PAUSED),
                (WorkerStatus.STOPPED, WorkerStatus.LOST, WorkerStatus.CRASHLOOPING), "restarted"),
}


def _targets(command: Any) -> Any:
    """WORKER_ID, --supervisor, --all, --wait and --json."""
    for option in reversed([
        click.argument("worker_id", required=False),
        click.option("--supervisor", default=None, metavar="NAME",
                     help="Every live worker of this supervisor (on every host)."),
        click.option("--all", "every", is_flag=True, help="Every live worker, on every host."),
        click.option("--wait", is_flag=True,
                     help=f"Wait (up to {WAIT_SECONDS:g} s) until every worker's record shows the result."),
        click.option("--json", "as_json", is_flag=True, help="What was sent and skipped, as one JSON document."),
    ]):
        command = option(command)
    return command


def _steer(ctx: click.Context, command: str, worker_id: str | None, supervisor: str | None, every: bool,
           wait: bool, as_json: bool) -> None:
    from ..manager import WorkerManager

    if sum((worker_id is not None, supervisor is not None, every)) != 1:
        raise click.UsageError(f"give one WORKER_ID, --supervisor NAME or --all: the workers to {command}")
    applies, results, done = COMMANDS[command]
    manager = WorkerManager(settings_from(ctx))
    send: Callable[[str], None] = getattr(manager, f"{command}_worker")
    sent: list[Worker] = []
    skipped: list[dict[str, Any]] = []
    if worker_id is not None:
        send(worker_id)  # UnknownWorker, WorkerGone: one line, exit 1
        sent.append(Worker.get(Worker.worker_id == worker_id))
    else:
        rows = manager.get_running_workers()
        if supervisor is not None:
            rows = [row for row in rows if row.supervisor == supervisor]
        for row in rows:
            if row.status not in applies:
                skipped.append({"id": row.worker_id, "status": row.status, "reason": f"it is {row.status}"})
                continue
            try:
                send(row.worker_id)
            except WorkerGone as gone:  # it stopped meanwhile
                skipped.append({"id": row.worker_id, "status": row.status, "reason": str(gone)})
                continue
            sent.append(row)
    statuses = _wait_for(sent, results) if wait and sent else {}
    if as_json:
        answer: dict[str, Any] = {"command": command, "workers": [row.worker_id for row in sent], "skipped": skipped}
        if wait:
            answer["statuses"] = statuses
        echo_json(answer)
    else:
        _report(command, done, sent, skipped, statuses, wait=wait, supervisor=supervisor, single=worker_id is not None)
    late = [worker for worker, status in statuses.items() if status not in results]
    if late:
        raise WatchtowerError(
            f"after {WAIT_SECONDS:g} s, not {done} yet: "
            + ", ".join(f"{worker} ({statuses[worker]})" for worker in late)
        )


def _wait_for(sent: list[Worker], results: tuple[str, ...]) -> dict[str, str]:
    """Each worker's status once all are in ``results``, or when WAIT_SECONDS are up."""
    ids = [row.worker_id for row in sent]
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        statuses = {row.worker_id: row.status for row in Worker.select().where(Worker.worker_id.in_(ids))}
        if all(status in results for status in statuses.values()) or time.monotonic() > deadline:
            return {worker: statuses.get(worker, "gone") for worker in ids}
        time.sleep(0.2)


def _report(command: str, done: str, sent: list[Worker], skipped: list[dict[str, Any]], statuses: dict[str, str],
            *, wait: bool, supervisor: str | None, single: bool) -> None:
    for row in sent:
        where = f"supervisor {row.supervisor} on {row.hostname}" if row.supervisor else f"on {row.hostname}"
        if wait:
            click.echo(f"worker {row.worker_id} ({where}): {statuses.get(row.worker_id)}")
        else:
            click.echo(f"{command} sent to worker {row.worker_id} ({where})")
    for entry in skipped:
        click.echo(f"skipped worker {entry['id']}: {entry['reason']}")
    if not single:
        scope = f"of supervisor {supervisor}" if supervisor is not None else "on every host"
        if not sent and not skipped:
            click.echo(f"no live workers {scope}: nothing to {command}")
            return
        verb = done if wait else f"sent {command} to"
        click.echo(f"{verb} {len(sent)} workers {scope}" + (f", skipped {len(skipped)}" if skipped else ""))
    if command == "restart" and sent:
        click.echo("a supervisor starts a fresh process in the place of each (a new id and pid)")


@click.command("pause")
@_targets
@click.pass_context
def pause(ctx: click.Context, worker_id: str | None, supervisor: str | None, every: bool, wait: bool,
          as_json: bool) -> None:
    """Pause workers: they take no messages and give back those they hold (Horizon's pause)."""
    _steer(ctx, "pause", worker_id, supervisor, every, wait, as_json)


@click.command("resume")
@_targets
@click.pass_context
def resume(ctx: click.Context, worker_id: str | None, supervisor: str | None, every: bool, wait: bool,
           as_json: bool) -> None:
    """Resume paused workers: they take messages again (Horizon's continue)."""
    _steer(ctx, "resume", worker_id, supervisor, every, wait, as_json)


@click.command("stop")
@_targets
@click.pass_context
def stop(ctx: click.Context, worker_id: str | None, supervisor: str | None, every: bool, wait: bool,
         as_json: bool) -> None:
    """Stop workers for good: each finishes its jobs in hand and exits; nothing replaces it.

    Its pool runs one worker fewer (below min_processes, if need be) until
    a start request or a restart of the supervisor.
    """
    _steer(ctx, "stop", worker_id, supervisor, every, wait, as_json)


@click.command("restart")
@_targets
@click.pass_context
def restart(ctx: click.Context, worker_id: str | None, supervisor: str | None, every: bool, wait: bool,
            as_json: bool) -> None:
    """Restart workers: each finishes its jobs in hand and exits, and its supervisor starts a fresh one at once.

    The fresh process has a new id and pid and loads the app's code anew
    (Horizon's terminate, after a deploy).
    """
    _steer(ctx, "restart", worker_id, supervisor, every, wait, as_json)
