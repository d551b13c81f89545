"""What the API's resources share: settings, the ledger, the bus, the manager, the broker.

Built once by :func:`watchtower.web.create_app` and handed to every
resource.  Nothing here does I/O when it is built: the ledger is opened
(and its tables created) by the first request that needs it, and retried by
the next one if the database was down; the bus, the worker manager and the
app's broker are made on first use too.  So an API whose database is down
still starts and answers ``/health`` with what is wrong.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .. import store
from ..models import database
from ..redact import Redactor

if TYPE_CHECKING:
    import dramatiq
    import peewee

    from ..bus import CommandBus
    from ..collector import MetricsCollector
    from ..config import Settings
    from ..manager import WorkerManager

__all__ = ["Services"]

T = TypeVar("T")


class Services:
    """The shared, lazily built dependencies of the API's resources."""

    def __init__(
        self,
        *,
        settings: Settings,
        broker: dramatiq.Broker | None = None,
        manager: WorkerManager | None = None,
        database: peewee.Database | None = None,
        supervisor: str | None = None,
    ) -> None:
        self.settings = settings
        self.redactor = Redactor(settings.redact)
        self.supervisor = supervisor
        self._broker = broker
        self._manager = manager
        self._database = database
        self._bus: CommandBus | None = None
        self._collector: MetricsCollector | None = None
        # A database the host opened (store.connect) is bound and has its tables.
        self._ledger_ready = database is not None
        self._lock = threading.RLock()

    def _once(self, attribute: str, make: Callable[[], T]) -> T:
        value = getattr(self, attribute)
        if value is None:
            with self._lock:
                value = getattr(self, attribute)
                if value is None:
                    value = make()
                    setattr(self, attribute, value)
        return value  # type: ignore[no-any-return]

    def ledger(self) -> None:
        """Make sure the ledger's database is bound and has its tables.

        Raises DatabaseUnavailable while the database cannot be reached; a
        later call tries again.
        """
        if self._ledger_ready:
            return
        with self._lock:
            if not self._ledger_ready:
                store.connect(self.settings.database_url)
                self._ledger_ready = True

    def bus(self) -> CommandBus:
        """The command bus that ``command_bus`` names (shared with the manager)."""
        from ..bus import open_bus

        return self._once("_bus", lambda: open_bus(self.settings))

    def broker(self) -> dramatiq.Broker:
        """The app's broker: the one given to create_app, else ``load_app(settings.app)``."""
        from ..app import load_app

        return self._once("_broker", lambda: load_app(self.settings.app))

    def broker_known(self) -> bool:
        """Whether there is a broker to ask: one given to create_app, or an ``app`` to load it from."""
        return self._broker is not None or bool(self.settings.app)

    def manager(self) -> WorkerManager:
        """The WorkerManager on this app's bus and ledger (start requests, commands)."""
        from ..manager import WorkerManager

        self.ledger()
        return self._once("_manager", lambda: WorkerManager(
            self.settings, bus=self.bus(), database=self._database or database.obj,
        ))

    def collector(self) -> MetricsCollector:
        """The MetricsCollector on the ledger's database (its own connection)."""
        from ..collector import MetricsCollector

        return self._once("_collector", lambda: MetricsCollector(self._database or self.settings))

    def stats(self) -> dict[str, Any]:
        """The job and worker counts of the poll."""
        return dict(self.collector().get_stats())

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""
        from ..exposition import exposition

        return exposition(self.settings, broker=self._broker, supervisor=self.supervisor)

    def close_connections(self) -> None:
        """Close this thread's database connections, so that the next use reconnects."""
        databases = [database.obj] if database.obj is not None else []
        if self._collector is not None:
            databases.append(self._collector.db)
        for db in dict.fromkeys(databases):  # the collector may share the ledger's
            try:
                db.close()
            except Exception:  # a broken connection may fail to close: it is dropped anyway
                pass
