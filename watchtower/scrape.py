"""Values a scrape reads from the ledger and the broker, cached briefly.

- ``watchtower_workers{supervisor,status}`` and
  ``watchtower_worker_resident_memory_bytes{supervisor}`` (live workers'
  memory added up) come from the workers table: a handful of rows, never
  the job table.  The live states (and ``crashlooping``) count every row;
  ``stopped`` and ``lost`` count the rows that ended in the last
  ``RECENT_EXITS_SECONDS`` (an hour), not every old record;
- ``watchtower_queue_messages{queue,state}`` comes from the broker.  Redis
  gives all three states exactly (``LLEN q``, ``HLEN q.DQ.msgs``,
  ``ZCARD q.XQ`` under the broker's namespace).  RabbitMQ gives ``ready`` and
  ``dead`` only: a delayed message is consumed from ``q.DQ`` by a worker and
  held in its memory until its eta, so the delay queue's count misses most
  of them, and a wrong number is worse than none.

Both are read by one thread of this module's own, at most once per
``ttl`` seconds, whatever the number of scrapes: database drivers and the
RabbitMQ client keep one connection per thread, and a thread per scrape
would leave a connection behind per scrape.  A scrape waits for a fresh
reading up to ``timeout`` seconds and otherwise serves the last one.

Scoped to a supervisor (the supervisor's own /metrics), the worker gauges
count that supervisor's workers on this host only, so that adding them up
over supervisors and hosts is right.  Queue depths are facts about the
broker, the same from every supervisor: dashboards take ``max`` of them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import dramatiq_internals as internals
from .models import Worker
from .statuses import WorkerStatus

__all__ = ["QueueDepths", "RedisQueueDepths", "RabbitmqQueueDepths", "ScrapeSources", "queue_depths_for", "sources_for"]

logger = logging.getLogger(__name__)

#: Seconds a reading of the ledger and the broker is reused.
CACHE_SECONDS = 5.0
#: Seconds a scrape waits for a fresh reading before serving the last one.
READ_TIMEOUT = 2.0
#: Seconds between two log lines about the same failing source.
ERROR_LOG_INTERVAL = 60.0
#: Worker rows that stopped or were lost count in ``watchtower_workers``
#: for this long after they ended (an hour).
RECENT_EXITS_SECONDS = 3600.0


class QueueDepths(Protocol):
    """Counts of messages per queue, as the broker knows them."""

    def depths(self) -> dict[str, dict[str, int]]:
        """``{queue: {"ready": n, "delayed": n, "dead": n}}`` (only the states it knows)."""
        ...


class RedisQueueDepths:
    """Depths from a Redis broker's keys, in one round trip."""

    def __init__(self, client: Any, namespace: str, queues: Any) -> None:
        self.client = client
        self.namespace = namespace
        self.queues = queues  # a callable giving the names, or a collection of them

    def depths(self) -> dict[str, dict[str, int]]:
        names = sorted(self.queues() if callable(self.queues) else self.queues)
        pipe = self.client.pipeline(transaction=False)
        namespace = self.namespace
        for name in names:
            pipe.llen(internals.ready_key(namespace, name))
            pipe.hlen(internals.delayed_messages_key(namespace, name))
            pipe.zcard(internals.dead_key(namespace, name))
        counts = pipe.execute()
        return {
            name: {"ready": counts[3 * i], "delayed": counts[3 * i + 1], "dead": counts[3 * i + 2]}
            for i, name in enumerate(names)
        }


class RabbitmqQueueDepths:
    """Ready and dead counts from a RabbitMQ broker (see the module doc for delayed)."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def depths(self) -> dict[str, dict[str, int]]:
        result = {}
        for name in sorted(_canonical(self.broker.get_declared_queues())):
            ready, _delayed, dead = self.broker.get_queue_message_counts(name)
            result[name] = {"ready": ready, "dead": dead}
        return result


class StubQueueDepths:
    """Depths from Dramatiq's StubBroker (for users' own tests)."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    def depths(self) -> dict[str, dict[str, int]]:
        result = {}
        for name in sorted(_canonical(self.broker.get_declared_queues())):
            ready = internals.stub_queue(self.broker, name)
            delayed = internals.stub_queue(self.broker, internals.dq_name(name))
            result[name] = {
                "ready": ready.qsize() if ready is not None else 0,
                "delayed": delayed.qsize() if delayed is not None else 0,
                "dead": len(internals.stub_dead_letters(self.broker, name)),
            }
        return result


def _canonical(queues: Any) -> set[str]:
    return {internals.q_name(name) for name in queues}


def queue_depths_for(broker: Any) -> QueueDepths | None:
    """The depth reader for a Dramatiq broker, or None for a kind it cannot read."""
    kind = type(broker).__name__.lower()
    if "redis" in kind:
        return RedisQueueDepths(
            internals.redis_client(broker), internals.redis_namespace(broker),
            lambda: _canonical(broker.get_declared_queues()),
        )
    if "rabbitmq" in kind:
        return RabbitmqQueueDepths(broker)
    if "stub" in kind:
        return StubQueueDepths(broker)
    return None


@dataclass
class _Reading:
    at: float = 0.0
    workers: list[tuple[str, str, int, int]] | None = None  # supervisor, status, count, memory
    depths: dict[str, dict[str, int]] | None = None
    errors: dict[str, float] = field(default_factory=dict)


class ScrapeSources:
    """A collector of the values read from the ledger and the broker (see the module doc).

    ``app`` names the user's app module: when no ``broker`` is given, it is
    imported (once, by this collector's thread) to find the broker.
    """

    def __init__(
        self,
        *,
        database_url: str | None,
        broker: Any = None,
        app: str | None = None,
        supervisor: str | None = None,
        hostname: str | None = None,
        ttl: float = CACHE_SECONDS,
        timeout: float = READ_TIMEOUT,
    ) -> None:
        self.database_url = database_url
        self.broker = broker
        self.app = app
        self.supervisor = supervisor
        self.hostname = hostname or socket.gethostname()
        self.ttl = ttl
        self.timeout = timeout
        self._reading = _Reading()
        self._lock = threading.Condition()
        self._wanted = False
        self._reads = 0
        self._db: Any = None
        self._depths: QueueDepths | None = None
        self._depths_ready = False
        self._thread: threading.Thread | None = None
        self._closed = False

    # The collector ---------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        reading = self.reading()
        if reading.workers is not None:
            workers = GaugeMetricFamily(
                "watchtower_workers",
                "Worker processes by supervisor and status (from the workers table; stopped and lost: "
                "those that ended in the last hour).",
                labels=("supervisor", "status"),
            )
            memory = GaugeMetricFamily(
                "watchtower_worker_resident_memory_bytes", "Resident memory of the live workers, added up, bytes.",
                labels=("supervisor",),
            )
            per_supervisor: dict[str, dict[str, int]] = {}
            memory_by: dict[str, int] = {}
            for supervisor, status, count, rss in reading.workers:
                per_supervisor.setdefault(supervisor, {})[status] = count
                if status in WorkerStatus.ALIVE:
                    memory_by[supervisor] = memory_by.get(supervisor, 0) + rss
            for supervisor, counts in sorted(per_supervisor.items()):
                # Every status, zeros too: a series that vanishes is not a zero.
                for status in WorkerStatus.ALL:
                    workers.add_metric((supervisor, status), counts.get(status, 0))
                memory.add_metric((supervisor,), memory_by.get(supervisor, 0))
            yield workers
            yield memory
        if reading.depths is not None:
            depths = GaugeMetricFamily(
                "watchtower_queue_messages", "Messages in each queue by state, as the broker counts them.",
                labels=("queue", "state"),
            )
            for queue, states in sorted(reading.depths.items()):
                for state, count in states.items():
                    depths.add_metric((queue, state), count)
            yield depths

    def reading(self) -> _Reading:
        """The latest reading, refreshed first if it is older than ``ttl``."""
        with self._lock:
            if time.monotonic() - self._reading.at < self.ttl:
                return self._reading
            target = self._reads + 1
            self._wanted = True
            self._ensure_thread()
            self._lock.notify_all()
            deadline = time.monotonic() + self.timeout
            while self._reads < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    logger.warning("the ledger or broker took over %.1fs to answer: serving older values", self.timeout)
                    break
                self._lock.wait(left)
            return self._reading

    def close(self) -> None:
        """Stop the reading thread and close its connections."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    # The reading thread ------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="watchtower-scrape", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._wanted and not self._closed:
                    self._lock.wait()
                if self._closed:
                    break
                self._wanted = False
                errors = dict(self._reading.errors)
            reading = _Reading(at=time.monotonic(), errors=errors)
            reading.workers = self._guard(reading, "ledger", self._read_ledger)
            reading.depths = self._guard(reading, "broker", self._read_depths)
            with self._lock:
                self._reading = reading
                self._reads += 1
                self._lock.notify_all()
        if self._db is not None:
            self._db.close()

    def _guard(self, reading: _Reading, source: str, read: Any) -> Any:
        try:
            return read()
        except Exception as error:
            now = time.monotonic()
            if now - reading.errors.get(source, -ERROR_LOG_INTERVAL) >= ERROR_LOG_INTERVAL:
                reading.errors[source] = now
                logger.warning("cannot read the %s for /metrics (its values are left out): %s", source, error)
            if source == "ledger" and self._db is not None:
                self._db.close()  # a broken connection: open a new one next time
            return None

    def _read_ledger(self) -> list[tuple[str, str, int, int]] | None:
        """The workers' values, through a new connection if the one kept from the last read broke.

        A connection kept between two scrapes fails on its first use after
        the database restarted (an outage no scrape saw, or the first
        scrape after one): that says nothing about the database now.
        """
        reused = self._db is not None and not self._db.is_closed()
        try:
            return self._read_workers()
        except Exception:
            if not reused:
                raise
            self._db.close()
            return self._read_workers()

    def _read_workers(self) -> list[tuple[str, str, int, int]] | None:
        if not self.database_url:
            return None
        if self._db is None:
            from .store import open_database

            self._db = open_database(self.database_url)
        table = Worker._meta.table_name
        param = self._db.param
        # Stopped and lost rows count only if they ended within the window: the
        # table keeps every old record until a prune, and a gauge that grows
        # with each deploy says nothing.  Old rows still give their supervisor
        # its zeros.
        ended = "COALESCE(stopped_at, last_heartbeat, started_at, 0)"
        sql = (
            f"SELECT supervisor, status, SUM(CASE WHEN status IN ({param}, {param}) AND {ended} < {param} "
            f"THEN 0 ELSE 1 END), SUM(memory_rss) FROM {table}"
        )
        cutoff = int((time.time() - RECENT_EXITS_SECONDS) * 1000)
        params: list[Any] = [WorkerStatus.STOPPED, WorkerStatus.LOST, cutoff]
        if self.supervisor is not None:
            sql += f" WHERE supervisor = {param} AND hostname = {param}"
            params += [self.supervisor, self.hostname]
        sql += " GROUP BY supervisor, status"
        rows = self._db.execute_sql(sql, params).fetchall()
        return [(supervisor or "", status, int(count), int(rss or 0)) for supervisor, status, count, rss in rows]

    def _read_depths(self) -> dict[str, dict[str, int]] | None:
        if not self._depths_ready:
            self._depths_ready = True
            broker = self.broker
            if broker is None and self.app:
                from .app import load_app

                broker = load_app(self.app)
            if broker is not None:
                self._depths = queue_depths_for(broker)
                if self._depths is None:
                    logger.info("queue depths are not available for a %s", type(broker).__name__)
        return self._depths.depths() if self._depths is not None else None


_sources: dict[tuple[Any, ...], ScrapeSources] = {}
_sources_lock = threading.Lock()


def sources_for(settings: Any, *, broker: Any = None, supervisor: str | None = None) -> ScrapeSources:
    """The ScrapeSources for these settings, broker and supervisor, made once and reused.

    The cache of readings lives in it, so every scrape of one process shares it.
    """
    key = (settings.database_url, settings.app, id(broker), supervisor, settings.hostname)
    with _sources_lock:
        sources = _sources.get(key)
        if sources is None:
            sources = _sources[key] = ScrapeSources(
                database_url=settings.database_url, broker=broker, app=settings.app, supervisor=supervisor,
                hostname=settings.hostname,
            )
        return sources
