"""Putting the messages a dead worker held back on their queues, at once.

A Redis broker takes back the messages of a consumer that died only when its
maintenance, which runs on a random 0.1% of the broker's commands, finds the
consumer silent for the broker's ``heartbeat_timeout`` (60 s by default): the
jobs of a killed worker wait minutes, although its supervisor saw the death
at once.  A supervisor that knows a worker is dead (it reaped the process, or
the worker's host went silent past ``heartbeat_timeout``) calls
:meth:`Rescuer.rescue`, and the messages are on their queues again within
the supervisor's next pass.

What a worker held is known exactly: each ``watchtower worker`` process that
a supervisor started names its Redis consumers by its worker id (it sets the
broker's ``broker_id`` before its first fetch; supervisors' worker ids are
unique), so a consumer's unacknowledged ids sit in
``<namespace>:__acks__.<worker id>.<queue>`` and ``.<queue>.DQ``.  One Lua
script, atomic as the broker's own ``dispatch.lua``, moves every id of those
sets whose message is still stored back to the head of its queue, deletes the
sets and the consumer's heartbeat entry, and dead-letters instead (into
``<queue>.XQ``, as Dramatiq's nack does) the ids named as poison: jobs lost
``max_lost`` times (see :mod:`watchtower.supervisor`).

A message is never put back while a live process may still run it: the
supervisor kills a silent worker before it reaps and rescues it, and for a
worker it cannot see (another host's) the script first checks the broker's
own heartbeat of the consumer and touches nothing if it is recent
(``silence``): a worker cut off from the ledger but not from Redis keeps its
messages, and the rescue is tried again until the broker too has not heard
from it for that long.

RabbitMQ needs no rescue: the broker redelivers a consumer's unacknowledged
messages as soon as its connection closes, which the kernel does when the
process dies; the worker that receives such a message records the lost
attempt (see :mod:`watchtower.poison`).  The StubBroker lives in one
process.  Other brokers keep their own redelivery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import psutil

from . import dramatiq_internals as internals
from .ledger import give_up
from .metric_listeners import record_given_up
from .middleware import broker_kind
from .models import Job, Worker
from .payload import encode_message
from .poison import give_up_reason, poison_jobs

__all__ = ["PutBack", "Rescuer", "name_consumers", "RESCUE_SCRIPT", "PENDING_FOR"]

logger = logging.getLogger(__name__)

#: Seconds a rescue that could not run (broker unreachable, app still
#: loading, a stale worker the broker still hears from) is tried again; after
#: that the broker's own maintenance is left to do it.
PENDING_FOR = 600.0
#: Seconds between two tries of the pending rescues.
PENDING_EVERY = 2.0

# KEYS[1]: the heartbeats sorted set; then five keys per consumed queue:
# the consumer's ack set, the queue's list, its bodies, its dead-letter set
# and that set's bodies.  ARGV: the consumer's broker id, the time (ms), the
# heartbeat after which the consumer counts as alive (-1: it is known dead),
# then the poison ids.
RESCUE_SCRIPT = """
local heartbeats = KEYS[1]
local broker_id = ARGV[1]
local now = ARGV[2]
local alive_after = tonumber(ARGV[3])
if alive_after >= 0 then
    local beat = redis.call("zscore", heartbeats, broker_id)
    if beat and tonumber(beat) > alive_after then
        return {-1, {}}
    end
end
local poison = {}
for i = 4, #ARGV do
    poison[ARGV[i]] = true
end
local requeued = 0
local dead = {}
for k = 2, #KEYS, 5 do
    local acks, ready, bodies, xq, xbodies = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
    local ids = redis.call("smembers", acks)
    for _, id in ipairs(ids) do
        if poison[id] then
            local body = redis.call("hget", bodies, id)
            if body then
                redis.call("zadd", xq, now, id)
                redis.call("hset", xbodies, id, body)
                redis.call("hdel", bodies, id)
                table.insert(dead, id)
                table.insert(dead, body)
            end
        elseif redis.call("hexists", bodies, id) == 1 then
            redis.call("lpush", ready, id)
            requeued = requeued + 1
        end
    end
    redis.call("del", acks)
end
redis.call("zrem", heartbeats, broker_id)
return {requeued, dead}
"""


def name_consumers(broker: Any, worker_id: str) -> None:
    """Make ``broker``'s consumers known by ``worker_id`` (Redis), so that a rescue finds what they hold.

    Call it before the worker's first fetch, and only with an id no other
    process has had: the ids supervisors give have a random part, as
    Dramatiq's own broker ids are random.
    """
    if broker_kind(broker) == "redis":
        internals.set_redis_broker_id(broker, worker_id)


@dataclass(frozen=True)
class PutBack:
    """What one rescue did."""

    requeued: int = 0  # messages back on their queues
    dead: tuple[str, ...] = ()  # broker message ids dead-lettered (the poison ones found)
    alive: bool = False  # the broker still hears from the consumer: nothing was touched
    #: The dead-lettered messages as the broker stored them, by broker message id.
    bodies: Mapping[str, bytes] = field(default_factory=dict, compare=False, repr=False)


class Rescuer:
    """Puts the messages of dead workers back on their queues (see the module doc).

    ``broker``: the app's Dramatiq broker; without one, the app module named
    by ``app`` is imported to find it, in a thread of its own from
    :meth:`start` (or at the first rescue).  ``max_lost``: the setting of
    that name (see :mod:`watchtower.poison`).  ``clock``: monotonic seconds.
    """

    def __init__(
        self,
        *,
        broker: Any = None,
        app: str | None = None,
        max_lost: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.max_lost = max_lost
        self.clock = clock
        self._broker = broker
        self._script: Any = None
        self._loaded = threading.Event()
        self._failed: str | None = None
        self._loader: threading.Thread | None = None
        if broker is not None:
            self._loaded.set()
        self._pending: dict[str, _Rescue] = {}  # by worker id

    # The broker ---------------------------------------------------------------

    def start(self) -> None:
        """Import the app (to find its broker) in a thread, so that the first rescue needs not wait."""
        if self._loaded.is_set() or self._loader is not None:
            return
        self._loader = threading.Thread(target=self._load, name="watchtower-rescue-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        from .app import load_app

        try:
            self._broker = load_app(self.app)
        except Exception as error:
            self._failed = str(error)
            logger.warning(
                "the messages of dead workers are left to the broker's own redelivery: %s", error
            )
        finally:
            self._loaded.set()

    def broker(self, wait: float = 0.0) -> Any:
        """The app's broker; None while it is loading (or if the app cannot be imported)."""
        if not self._loaded.is_set():
            self.start()
            self._loaded.wait(wait)
        return self._broker

    @property
    def kind(self) -> str | None:
        """``redis``, ``rabbitmq``, ``stub``, another broker's class name, or None before the broker is known."""
        return None if self._broker is None else broker_kind(self._broker)

    # Rescues --------------------------------------------------------------------

    def rescue(
        self,
        worker_id: str,
        queues: Iterable[str],
        lost: Sequence[Job],
        *,
        last_exit: str,
        silence: float | None = None,
    ) -> PutBack | None:
        """Put back what dead ``worker_id`` held, except the jobs of ``lost`` lost ``max_lost`` times.

        ``lost``: the attempts just marked lost (what ``mark_lost`` returned).
        The poison ones are dead-lettered and their rows failed with the
        reason (``last_exit``: how the worker ended); they are counted in
        ``watchtower_jobs_given_up_total`` and ``watchtower_jobs_failed_total``.
        ``silence``: the worker may be alive (it is another host's): touch
        nothing while the broker heard from it within this many seconds.
        Returns what was done, or None when it cannot be done now (the broker
        is still loading or unreachable, or still hears from the worker): it
        is then tried again by :meth:`tick` for :data:`PENDING_FOR` seconds.
        """
        poison = {job.broker_message_id: job for job in poison_jobs(lost, self.max_lost) if job.broker_message_id}
        now = self.clock()
        names = tuple(sorted({internals.q_name(queue) for queue in queues}))
        return self._try(_Rescue(worker_id, names, poison, last_exit, silence, since=now, due=now))

    def put_back(self, worker_id: str, queues: Iterable[str]) -> PutBack | None:
        """Put back what dead ``worker_id`` held on ``queues``, with no poison check (see :meth:`rescue`)."""
        return self.rescue(worker_id, queues, (), last_exit="")

    def rescue_stale(self, row: Worker, lost: Sequence[Job], *, threshold: float, hostname: str) -> PutBack | None:
        """:meth:`rescue` for a worker whose record went stale (see ``records.clean_stale_workers``).

        ``row`` has its id, hostname, pid and queues; ``threshold``: the
        silence, seconds, that made it stale; ``hostname``: this host's name.
        It may be alive still: on this host, a live process with its pid and
        its id on its command line keeps its messages; elsewhere, so does a
        worker the broker heard from within ``threshold`` (the rescue waits
        until it has not).  Errors are logged, not raised (the row is already
        marked lost).
        """
        if row.hostname == hostname and row.pid and _worker_alive(row.pid, row.worker_id):
            logger.warning("stale worker %s (pid %d) still runs here: its messages stay with it",
                           row.worker_id, row.pid)
            return None
        try:
            return self.rescue(row.worker_id, row.get_queues(), lost, last_exit=f"no heartbeat for {threshold:g} s",
                               silence=threshold)
        except Exception:
            logger.exception("cannot put back the messages of stale worker %s", row.worker_id)
            return None

    def tick(self) -> None:
        """Try the rescues that could not run again, until PENDING_FOR has passed."""
        if not self._pending:
            return
        now = self.clock()
        for worker_id, rescue in list(self._pending.items()):
            if now - rescue.since > PENDING_FOR or self._failed is not None:
                del self._pending[worker_id]
                logger.warning("gave up putting back the messages of worker %s: the broker's own "
                               "maintenance will", worker_id)
            elif now >= rescue.due:
                self._try(rescue)

    @property
    def pending(self) -> list[str]:
        """Worker ids whose rescue waits to be tried again."""
        return sorted(self._pending)

    def _try(self, rescue: _Rescue) -> PutBack | None:
        broker = self.broker()
        if broker is None:
            if self._failed is None:
                self._keep(rescue)
            return None
        if self.kind != "redis":
            self._pending.pop(rescue.worker_id, None)
            return PutBack()  # the broker redelivers by itself (RabbitMQ), or lives in one process (stub)
        try:
            result = self._run(broker, rescue)
        except Exception as error:
            logger.warning("cannot put back the messages of worker %s now: %s", rescue.worker_id, error)
            self._keep(rescue)
            return None
        if result.alive:
            self._keep(rescue)
            return result
        self._pending.pop(rescue.worker_id, None)
        if result.requeued or result.dead:
            logger.warning(
                "put back %d messages of dead worker %s on %s%s", result.requeued, rescue.worker_id,
                ", ".join(rescue.queues), f", dead-lettered {len(result.dead)}" if result.dead else "",
            )
        for broker_id in result.dead:
            self._give_up(rescue.poison[broker_id], rescue.last_exit, result.bodies.get(broker_id))
        return result

    def _give_up(self, job: Job, last_exit: str, body: bytes | None) -> None:
        reason = give_up_reason(job.lost_attempts, self.max_lost, last_exit)
        try:
            # The ledger keeps the message to retry it; a producer without the
            # middleware left none, so it is taken from the dead letter.
            if not give_up(job, reason, payload=_payload(body)):
                return
        except Exception:
            logger.exception("job %s of %s/%s is dead-lettered, but the ledger could not record it failed",
                             job.message_id, job.queue, job.actor)
            return
        record_given_up(job.queue, job.actor, failed=True)
        logger.warning("gave up job %s of %s/%s: %s", job.message_id, job.queue, job.actor, reason)

    def _run(self, broker: Any, rescue: _Rescue) -> PutBack:
        namespace = internals.redis_namespace(broker)
        client = internals.redis_client(broker)
        if self._script is None:
            self._script = client.register_script(RESCUE_SCRIPT)
        keys = [internals.heartbeats_key(namespace)]
        for queue in rescue.queues:
            for consumed in (queue, internals.dq_name(queue)):
                keys += [
                    internals.ack_key(namespace, rescue.worker_id, consumed),
                    internals.ready_key(namespace, consumed),
                    internals.messages_key(namespace, consumed),
                    internals.dead_key(namespace, queue),
                    internals.dead_messages_key(namespace, queue),
                ]
        now = int(time.time() * 1000)
        alive_after = -1 if rescue.silence is None else now - int(rescue.silence * 1000)
        requeued, dead = self._script(
            keys=keys, args=[rescue.worker_id, now, alive_after, *sorted(rescue.poison)], client=client
        )
        if int(requeued) < 0:
            logger.info("worker %s still talks to the broker: its messages stay with it for now", rescue.worker_id)
            return PutBack(alive=True)
        bodies = {_text(dead[i]): bytes(dead[i + 1]) for i in range(0, len(dead), 2)}
        return PutBack(int(requeued), tuple(sorted(bodies)), bodies=bodies)

    def _keep(self, rescue: _Rescue) -> None:
        rescue.due = self.clock() + PENDING_EVERY
        self._pending[rescue.worker_id] = rescue


@dataclass
class _Rescue:
    """One dead worker whose messages are to go back."""

    worker_id: str
    queues: tuple[str, ...]
    poison: dict[str, Job]  # broker message id -> the job lost max_lost times
    last_exit: str
    silence: float | None  # seconds the broker must not have heard from it (None: it is known dead)
    since: float  # monotonic: when it was asked for
    due: float  # monotonic: the next try


def _worker_alive(pid: int, worker_id: str) -> bool:
    """Whether process ``pid`` of this host lives and is the worker ``worker_id`` (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and worker_id in process.cmdline()
    except psutil.Error:
        return False


def _payload(body: bytes | None) -> str | None:
    """A stored message as the ledger keeps it (None if the app's encoder cannot read it)."""
    if body is None:
        return None
    try:
        return encode_message(dramatiq.Message.decode(body))
    except Exception:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
