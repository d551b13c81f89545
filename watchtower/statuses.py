"""The statuses of a job row and of a worker row: the ledger's vocabulary, free of any database."""

from __future__ import annotations

__all__ = ["JobStatus", "WorkerStatus"]


class JobStatus:
    """The statuses a job row can have."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    #: Pending or processing with no news for ``unknown_after`` seconds: its
    #: last events never reached the ledger (see watchtower.stuck).  Any
    #: later event of the job replaces it.
    UNKNOWN = "unknown"

    ALL = (PENDING, PROCESSING, COMPLETED, FAILED, SKIPPED, UNKNOWN)
    FINISHED = (COMPLETED, FAILED, SKIPPED)


class WorkerStatus:
    """The statuses a worker row can have."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    LOST = "lost"
    CRASHLOOPING = "crashlooping"

    ALL = (STARTING, RUNNING, PAUSED, STOPPING, STOPPED, LOST, CRASHLOOPING)
    ALIVE = (STARTING, RUNNING, PAUSED, STOPPING)
