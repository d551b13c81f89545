"""The worker processes of one supervisor: started, their output copied, reaped, signalled.

Horizon's ProcessPool: what is done to the processes themselves.  What a
supervisor makes of them (how many, when to restart, what the ledger and
the metrics learn of an exit) is :mod:`watchtower.supervisor`'s; the
slots' bookkeeping, free of processes, is :mod:`watchtower.pool`'s.

Each worker runs in a session of its own, so that a terminal's Ctrl-C
reaches only the supervisor, which then stops them in order.  Its output
goes to a file in the pool's run directory (the child keeps its own
descriptor, so a supervisor that stops reading never blocks it) and is
copied to the supervisor's stderr as it comes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

from .pool import Child, Slot, new_worker_id

__all__ = ["ProcessPool"]

logger = logging.getLogger(__name__)


class ProcessPool:
    """The slots of supervisor ``name`` on ``hostname`` and the process each one runs.

    ``command`` gives the argv of a worker (its id, its slot); ``env`` is its
    environment (the same dict: what the supervisor adds later reaches the
    next worker); ``output``: where the workers' output is copied (this
    process's stderr by default).
    """

    def __init__(
        self,
        *,
        name: str,
        hostname: str,
        command: Callable[[str, Slot], list[str]],
        env: dict[str, str],
        output: IO[bytes] | None = None,
    ) -> None:
        self.name = name
        self.hostname = hostname
        self.command = command
        self.env = env
        self.output = output
        #: Every slot the supervisor is responsible for (see :class:`~watchtower.pool.Slot`).
        self.slots: list[Slot] = []
        self._spawned = 0
        self._run_dir: str | None = None

    def open(self) -> None:
        """Make the run directory that holds the workers' output files."""
        self._run_dir = tempfile.mkdtemp(prefix=f"watchtower-{self.name}-")

    def close(self) -> None:
        """Ask whatever still runs to stop, and remove the run directory.

        Only after a bug does anything still run here (the supervisor waits
        for its workers); such a worker also stops by itself once its
        supervisor is gone.
        """
        for slot in self.slots:
            if slot.child is not None and slot.child.popen.poll() is None:
                slot.child.popen.send_signal(signal.SIGTERM)
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def children(self) -> dict[str, int]:
        """Worker id -> pid of the processes running now."""
        return {slot.child.worker_id: slot.child.pid for slot in self.slots if slot.child is not None}

    # Starting --------------------------------------------------------------

    def next_worker_id(self, slot: Slot) -> str:
        """The id of the next process of ``slot``: the one a start request asked for, else a new one."""
        self._spawned += 1
        worker_id = slot.next_id or new_worker_id(self.hostname, self.name, self._spawned)
        slot.next_id = None
        return worker_id

    def start(self, slot: Slot, worker_id: str, now: float) -> Child:
        """Start ``slot``'s process as ``worker_id`` (``now``: monotonic seconds); OSError if it cannot start."""
        assert self._run_dir is not None, "open() the pool first"
        log_path = os.path.join(self._run_dir, f"worker-{self._spawned}.log")
        with open(log_path, "wb") as out:  # the child keeps its own descriptor
            popen = subprocess.Popen(
                self.command(worker_id, slot),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(worker_id, popen, started=now, log=open(log_path, "rb"), log_path=log_path)
        slot.restarts = slot.processes
        slot.processes += 1
        slot.child = child
        return child

    # Watching --------------------------------------------------------------

    def reap(self) -> Iterator[tuple[Slot, Child, int]]:
        """Copy the workers' new output; yield ``(slot, child, exit code)`` for each one that exited.

        The slot is free (``slot.child`` is None) when it is yielded; the
        caller may remove it from :attr:`slots` before the next one comes.
        """
        for slot in list(self.slots):
            child = slot.child
            if child is None:
                continue
            self._copy_output(child)
            code = child.popen.poll()
            if code is None:
                continue
            self._copy_output(child, final=True)
            child.log.close()
            os.unlink(child.log_path)
            slot.child = None
            yield slot, child, code

    def _copy_output(self, child: Child, *, final: bool = False) -> None:
        """Copy what the worker wrote since the last look to our stderr."""
        lines = child.read_output(final=final)
        if lines:
            output = self.output or sys.stderr.buffer
            try:
                output.write(lines)
                output.flush()
            except (OSError, ValueError):
                pass  # our own stderr is gone; the workers' output is not worth dying for

    # Signalling ------------------------------------------------------------

    @staticmethod
    def terminate(child: Child) -> None:
        """Ask ``child`` to stop gracefully (SIGTERM), remembering that it was asked."""
        child.terminated = True
        child.popen.send_signal(signal.SIGTERM)

    def kill_all(self, why: str) -> None:
        """SIGKILL every worker still running; ``why`` becomes their exit's reason."""
        for slot in self.slots:
            if slot.child is not None and slot.child.popen.poll() is None:
                slot.child.kill_reason = f"killed by its supervisor: {why}"
                logger.warning("worker %s (pid %d) %s", slot.child.worker_id, slot.child.pid, slot.child.kill_reason)
                slot.child.popen.kill()
