"""Exceptions raised by Watchtower.

The tree (tests/test_errors.py holds it to the classes below)::

    WatchtowerError
     +-- ConfigError             a setting is unknown, malformed or of the wrong type
     |    +-- DatabaseURLError   a database URL cannot be understood
     +-- DatabaseDriverError     no usable driver for the ledger's database is installed
     +-- SchemaError             the ledger's schema is newer than this release
     +-- DatabaseUnavailable     the ledger's database cannot be reached or opened
     +-- BusError                the command bus cannot be reached or answered badly
     +-- WorkerError             a worker cannot be found, started or steered
     |    +-- UnknownWorker      no worker has that id
     |    +-- WorkerGone         the worker has stopped or was lost: it cannot be steered
     +-- AppImportError          the user's app module cannot be imported
     +-- MetricsError            the metrics directory or server cannot be set up
     |    +-- MetricsDirInUse    another supervisor holds the metrics directory
     |    +-- MetricsServerError /metrics cannot be served (port in use...)
     +-- BrokerError             the app's broker cannot be reached
     +-- JobError                a job cannot be found or acted on
     |    +-- JobNotFound        no job has that id
     |    +-- JobConflict        the job's state forbids the action (retry a completed job...)
     +-- SpoolError              the spool directory or a spool file cannot be used

The command line turns every one of them into a one-line message and a
non-zero exit code; the HTTP API turns them into JSON errors.
"""

from __future__ import annotations


class WatchtowerError(Exception):
    """The root of every error that Watchtower raises on purpose."""


class ConfigError(WatchtowerError):
    """A setting is unknown, malformed, or of the wrong type."""


class DatabaseURLError(ConfigError):
    """A database URL names an unknown scheme or is malformed."""


class DatabaseDriverError(WatchtowerError):
    """The database's driver is missing, cannot be imported, or is too old."""


class SchemaError(WatchtowerError):
    """The ledger's schema cannot be used by this release."""


class DatabaseUnavailable(WatchtowerError):
    """The ledger's database cannot be reached, opened or written."""


class BusError(WatchtowerError):
    """The command bus is unreachable or gave an unusable answer."""


class WorkerError(WatchtowerError):
    """A worker cannot be found, started or steered."""


class UnknownWorker(WorkerError):
    """No worker record has the id given."""


class WorkerGone(WorkerError):
    """The worker has stopped (or was lost): a command to it would never be obeyed."""


class AppImportError(WatchtowerError):
    """The user's app module is missing, raises on import, or names no broker."""


class MetricsError(WatchtowerError):
    """The Prometheus metrics cannot be set up (directory or server)."""


class MetricsDirInUse(MetricsError):
    """Another live process (another supervisor) holds the multiprocess directory."""


class MetricsServerError(MetricsError):
    """The /metrics server cannot listen where it was told (port in use, no such address)."""


class BrokerError(WatchtowerError):
    """The app's Dramatiq broker cannot be reached or refused a message."""


class JobError(WatchtowerError):
    """A job cannot be found or acted on."""


class JobNotFound(JobError):
    """No job in the ledger has the given id."""


class JobConflict(JobError):
    """The job's state forbids the action: it is not failed, or was already retried."""


class SpoolError(WatchtowerError):
    """The spool directory cannot be used (not ours, not writable, not a directory), or a file in it is not a spool."""
