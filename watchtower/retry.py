"""Retrying a failed job: its stored message sent again as a new job linked to the old one.

The ledger keeps the whole message of a failed job (``Job.payload``).  A
retry rebuilds it with a fresh message id and the options Dramatiq wrote
during the failed run removed (its retry count, traceback, Redis id, eta),
enqueues it on the app's broker, and links the two rows: the new row's
``retried_from`` names the failed job, the failed row's ``retried_by`` names
the new one.  The failed row keeps its status, so the history stays.

The links are written *before* the enqueue, in one transaction, and the old
row is claimed with a conditional update (``retried_by IS NULL``): of two
retries racing for one failed job exactly one enqueues.  If the enqueue then
fails, both writes are undone and the job can be retried again.

Where the broker allows it, the broker's dead-letter copy of the failed
message is removed afterwards (Redis: the entry keyed by the job's
``broker_message_id`` in ``<namespace>:<queue>.XQ`` and ``.XQ.msgs``; the
StubBroker: its ``dead_letters``).  RabbitMQ cannot delete one message of a
queue by id, so its dead letter stays until the queue's own expiry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import dramatiq

from . import dramatiq_internals as internals
from .clock import day_of
from .errors import BrokerError, JobConflict, JobNotFound
from .middleware import READY_AT_OPTION
from .models import Job, database
from .payload import encode_message
from .statuses import JobStatus

__all__ = ["RetryResult", "retry_failed", "remove_dead_letter", "retryable_failed_ids", "RESET_OPTIONS"]

logger = logging.getLogger(__name__)

#: Options written by Dramatiq (or the middleware) during a run; a retry
#: starts without them, as a message fresh from its producer would.
RESET_OPTIONS = frozenset(
    {"retries", "traceback", internals.REDIS_MESSAGE_ID, "eta", "requeue_timestamp", READY_AT_OPTION}
)


@dataclass(frozen=True)
class RetryResult:
    """What a retry did."""

    failed_id: str  # the failed job's message id
    new_id: str  # the new job's message id
    queue: str
    actor: str
    dead_letter_removed: bool


def retry_failed(message_id: str, *, broker: dramatiq.Broker) -> RetryResult:
    """Enqueue failed job ``message_id`` again on ``broker`` as a new, linked job.

    Raises JobNotFound for an unknown id, JobConflict when the job is not
    failed, was already retried, or has no stored message, and BrokerError
    when the broker cannot take the message (nothing is changed then).
    """
    job = Job.find(message_id)
    if job is None:
        raise JobNotFound(f"no job has the id {message_id!r}")
    if job.status != JobStatus.FAILED:
        raise JobConflict(f"job {message_id} is {job.status}: only failed jobs can be retried")
    if job.retried_by:
        raise JobConflict(f"job {message_id} was already retried as job {job.retried_by}")
    message = _fresh_message(job)

    with database.atomic():
        claimed = (
            Job.update(retried_by=message.message_id)
            .where((Job.id == job.id) & (Job.status == JobStatus.FAILED) & Job.retried_by.is_null())
            .execute()
        )
        if not claimed:
            raise JobConflict(f"job {message_id} was retried by someone else just now")
        Job.insert(
            message_id=message.message_id,
            queue=message.queue_name,
            actor=message.actor_name,
            connection=job.connection,
            payload=encode_message(message),
            status=JobStatus.PENDING,
            queued_at=message.message_timestamp,
            queued_day=day_of(message.message_timestamp),
            retried_from=message_id,
            # progress 0: every event the middleware records for the new
            # message is newer than this row, so the ledger takes them all.
            progress=0,
            progress_at=0,
        ).execute()

    try:
        broker.enqueue(message)
    except BaseException as error:
        _unlink(job.id, message.message_id)
        if isinstance(error, Exception) and _is_connection_error(error):
            raise BrokerError(f"the broker did not take the retry of job {message_id}: {error}") from error
        raise

    removed = False
    try:
        removed = remove_dead_letter(
            broker, queue=job.queue, broker_message_id=job.broker_message_id, message_id=message_id
        )
    except Exception:
        # The retry itself succeeded; a dead letter left behind expires on
        # its own (Redis: dead_message_ttl), so this is not worth failing for.
        logger.warning("could not remove the dead letter of retried job %s", message_id, exc_info=True)
    logger.info("retried failed job %s as job %s on queue %s", message_id, message.message_id, message.queue_name)
    return RetryResult(
        failed_id=message_id,
        new_id=message.message_id,
        queue=message.queue_name,
        actor=message.actor_name,
        dead_letter_removed=removed,
    )


def _fresh_message(job: Job) -> dramatiq.Message:
    """The failed job's message with a new id and without the failed run's options."""
    if not job.payload:
        raise JobConflict(f"job {job.message_id} cannot be retried: the ledger kept no message for it")
    try:
        stored = job.get_payload() or {}
        args, kwargs, options = stored["args"], stored["kwargs"], stored.get("options") or {}
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(options, dict):
            raise TypeError("args, kwargs or options have the wrong type")
    except Exception as error:  # any decoder may raise anything on bad input
        raise JobConflict(
            f"job {job.message_id} cannot be retried: its stored message cannot be read ({error})"
        ) from None
    return dramatiq.Message(
        queue_name=internals.q_name(job.queue),
        actor_name=str(stored.get("actor_name") or job.actor),
        args=tuple(args),
        kwargs=dict(kwargs),
        options={key: value for key, value in options.items() if key not in RESET_OPTIONS},
    )


def _unlink(row_id: int, new_id: str) -> None:
    """Undo a retry whose enqueue failed, so that the job can be retried again."""
    try:
        with database.atomic():
            new = Job.find(new_id, Job.id)
            if new is not None:
                Job.delete().where(Job.id == new.id).execute()
            Job.update(retried_by=None).where((Job.id == row_id) & (Job.retried_by == new_id)).execute()
    except Exception:
        logger.exception("could not undo the links of a retry that was not enqueued (new id %s)", new_id)


def _is_connection_error(error: Exception) -> bool:
    import redis

    return isinstance(error, (internals.BrokerConnectionError, redis.RedisError, OSError))


def remove_dead_letter(
    broker: dramatiq.Broker, *, queue: str, broker_message_id: str | None, message_id: str
) -> bool:
    """Remove the broker's dead-letter copy of a message; True if one was removed.

    Redis keys its dead letters by ``broker_message_id``; the StubBroker
    keeps messages, matched by ``message_id``; other brokers (RabbitMQ)
    cannot remove one message by id and get False.
    """
    from dramatiq.brokers.stub import StubBroker

    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # pragma: no cover - redis is a runtime dependency
        RedisBroker = None  # type: ignore[assignment,misc]

    if RedisBroker is not None and isinstance(broker, RedisBroker):
        if not broker_message_id:
            return False
        namespace = internals.redis_namespace(broker)
        pipe = internals.redis_client(broker).pipeline()
        pipe.zrem(internals.dead_key(namespace, queue), broker_message_id)
        pipe.hdel(internals.dead_messages_key(namespace, queue), broker_message_id)
        removed, _ = pipe.execute()
        return bool(removed)
    if isinstance(broker, StubBroker):
        letters: list[Any] = internals.stub_dead_letters(broker, queue)
        keep = [message for message in letters if message.message_id != message_id]
        removed_any = len(keep) != len(letters)
        letters[:] = keep  # in place: the broker's consumers hold this list
        return removed_any
    return False


def retryable_failed_ids(*, queue: str | None = None, batch: int = 1000) -> list[str]:
    """Ids of the failed jobs not yet retried (of ``queue`` if given), oldest first."""
    ids: list[str] = []
    last = 0
    while True:
        query = Job.select(Job.id, Job.message_id).where(
            (Job.status == JobStatus.FAILED) & Job.retried_by.is_null() & (Job.id > last)
        )
        if queue is not None:
            query = query.where(Job.queue == queue)
        rows = cast(list[tuple[int, str]], list(query.order_by(Job.id).limit(batch).tuples()))
        if not rows:
            return ids
        ids.extend(message_id for _, message_id in rows)
        last = rows[-1][0]
