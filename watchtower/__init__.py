"""Watchtower: a job ledger, supervisor, Prometheus exporter and control API for Dramatiq.

Importing this package has no side effects: no settings are read and no
connection is opened until one of its objects is constructed.
"""

from .collector import MetricsCollector
from .config import Settings, SupervisorSettings, load_settings
from .errors import ConfigError, WatchtowerError
from .manager import WorkerManager
from .middleware import WatchtowerMiddleware
from .models import Job, Worker
from .recorder import Recorder
from .statuses import JobStatus, WorkerStatus
from .store import connect

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The web app is imported on first use: workers and producers import
    # this package and never need Falcon.
    if name == "create_app":
        from .web import create_app

        return create_app
    raise AttributeError(f"module 'watchtower' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "Job",
    "MetricsCollector",
    "JobStatus",
    "Recorder",
    "Settings",
    "SupervisorSettings",
    "WatchtowerError",
    "WatchtowerMiddleware",
    "Worker",
    "WorkerManager",
    "WorkerStatus",
    "connect",
    "create_app",
    "load_settings",
]
