"""The traceback a failed attempt leaves in the ledger.

The middleware keeps the text Dramatiq's Retries wrote for the attempt
when it is whole, and otherwise writes one itself with
``watchtower.tracebacks.format_exception``: the layout of
``traceback.format_exception`` without the lines of carets, capped to its
last EXCEPTION_LIMIT characters.  The first tests hold that formatter to
the standard library's text; the others run failing jobs through a real
Redis broker and dramatiq.Worker into a SQLite ledger and read the rows and
the events.
"""

from __future__ import annotations

import re
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from watchtower import WatchtowerMiddleware, load_settings, store
from watchtower.events import JobEvent, Kind
from watchtower.models import Job
from watchtower.statuses import JobStatus
from watchtower.tracebacks import EXCEPTION_LIMIT, RETRIES_FRAMES, format_exception, within

TRUNCATED = "...(truncated)...\n"


def standard_without_carets(exception: BaseException) -> str:
    """``traceback.format_exception``'s text without the lines of ``^`` and ``~`` under its frames (3.11+).

    The exception's own last lines stay as they are (a SyntaxError's caret
    points into the offending source).
    """
    text = "".join(traceback.format_exception(exception))
    last = "".join(traceback.format_exception_only(type(exception), exception))
    assert text.endswith(last)
    frames = text[:len(text) - len(last)]
    return "".join(line for line in frames.splitlines(True) if not re.fullmatch(r"\s*[\^~]+\s*", line)) + last


def raised(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as exception:
        return exception
    raise AssertionError("nothing raised")


def charge(amount: int) -> int:
    raise RuntimeError(f"card declined for {amount}")


#: The frame that raises, as a traceback shows it.
FAILING_FRAME = (f'  File "{charge.__code__.co_filename}", line {charge.__code__.co_firstlineno + 1}, in charge\n'
                 '    raise RuntimeError(f"card declined for {amount}")\n')


NESTED = "<a stack of distinct functions, no source>"


def nested(depth: int) -> Callable[[], None]:
    """A function whose call fails ``depth`` distinct frames down (no recursion to fold)."""
    namespace: dict[str, Any] = {"charge": charge}
    source = "def f0():\n    charge(0)\n" + "".join(f"def f{n}():\n    f{n - 1}()\n" for n in range(1, depth))
    exec(compile(source, NESTED, "exec"), namespace)
    return namespace[f"f{depth - 1}"]  # type: ignore[no-any-return]


def recurse(n: int) -> None:
    if n == 0:
        charge(n)
    recurse(n - 1)


def chained_cause() -> None:
    try:
        charge(1)
    except RuntimeError as error:
        raise LookupError("no such card") from error


def chained_context() -> None:
    try:
        {}["card"]
    except KeyError:
        charge(2)


def suppressed_context() -> None:
    try:
        {}["card"]
    except KeyError:
        raise ValueError("hidden context") from None


def noted() -> None:
    error = ValueError("with notes")
    error.add_note("first note\nspans two lines")
    error.add_note("second note")
    raise error


def cycle() -> None:
    first, second = RuntimeError("first"), RuntimeError("second")
    first.__context__, second.__context__ = second, first
    raise first


@pytest.mark.parametrize("fn", [
    lambda: charge(5),
    chained_cause,
    chained_context,
    suppressed_context,
    noted,
    cycle,
    lambda: recurse(40),
    lambda: compile("a b", "<job>", "exec"),
    lambda: 1 / 0,
], ids=["plain", "cause", "context", "from-none", "notes", "cycle", "recursion", "syntax-error", "builtin"])
def test_the_text_is_the_standard_one_without_carets(fn: Callable[[], object]) -> None:
    exception = raised(fn)
    assert format_exception(exception) == standard_without_carets(exception)


def test_an_exception_without_a_traceback_is_its_line() -> None:
    assert format_exception(KeyError("card")) == "KeyError: 'card'\n"
    assert format_exception(RuntimeError()) == "RuntimeError\n"


def test_an_exception_group_is_written_by_the_standard_formatter() -> None:
    def group() -> None:
        raise ExceptionGroup("two failures", [raised(lambda: charge(1)), raised(lambda: charge(2))])  # type: ignore[list-item]

    exception = raised(group)
    assert format_exception(exception) == "".join(traceback.format_exception(exception))
    assert not within(exception)


def test_a_long_traceback_keeps_its_last_part_with_the_failure() -> None:
    exception = raised(nested(600))
    full = standard_without_carets(exception)
    assert len(full) > 2 * EXCEPTION_LIMIT
    text = format_exception(exception)
    assert text == TRUNCATED + full[-EXCEPTION_LIMIT:]
    assert text.endswith('", line 2, in f0\n' + FAILING_FRAME + "RuntimeError: card declined for 0\n")


def test_a_huge_message_is_capped_to_its_end() -> None:
    exception = RuntimeError("x" * (3 * EXCEPTION_LIMIT) + " the end")
    text = format_exception(exception)
    assert len(text) == len(TRUNCATED) + EXCEPTION_LIMIT
    assert text.startswith(TRUNCATED) and text.endswith("x the end\n")


def test_within_says_whether_retries_30_frames_hold_the_whole_traceback() -> None:
    for depth, whole in ((RETRIES_FRAMES - 2, True), (RETRIES_FRAMES - 1, False)):
        exception = raised(nested(depth))  # raised(), f<depth-1>...f0, charge()
        assert len(list(traceback.walk_tb(exception.__traceback__))) == depth + 2
        assert within(exception) is whole
        as_retries_writes = "".join(traceback.format_exception(exception, limit=RETRIES_FRAMES))
        assert (as_retries_writes == "".join(traceback.format_exception(exception))) is whole

    def deep_cause() -> None:
        try:
            nested(RETRIES_FRAMES + 5)()
        except RuntimeError as error:
            raise LookupError("wrapped") from error

    assert not within(raised(deep_cause))
    assert within(raised(chained_cause)) and within(raised(cycle))


# Failing jobs through a real worker ----------------------------------------


def total(amount: int) -> int:
    # A line the standard formatter marks with carets (the call does not
    # span the whole line), so Retries' text and Watchtower's own differ.
    return charge(amount) + 1


MARK = "(as Retries wrote it)\n"


class MarkRetriesText(dramatiq.Middleware):
    """Runs its after_process_message right after Retries' and marks the traceback Retries wrote."""

    def after_process_message(self, broker: dramatiq.Broker, message: Any, *, result: Any = None,
                              exception: BaseException | None = None) -> None:
        if exception is not None and "traceback" in message.options:
            message.options["traceback"] += MARK


@pytest.fixture
def run_jobs(sqlite_url: str, tmp_path: Path, redis_namespace: str, queue_name: str) -> Iterator[Any]:
    """Declare actors on a Redis broker with Watchtower and a marker after
    Retries; run them; give the rows and events.
    """
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace)
    broker.add_middleware(MarkRetriesText(), before=Retries)
    settings = load_settings(env={}, cwd=tmp_path, overrides={"database_url": sqlite_url,
                                                             "recorder.flush_interval": 0.05})
    middleware = WatchtowerMiddleware(settings=settings)
    broker.add_middleware(middleware)
    events: list[JobEvent] = []
    lock = threading.Lock()

    def keep(event: JobEvent) -> None:
        with lock:
            events.append(event)

    middleware.listeners.append(keep)
    store.connect(sqlite_url)

    def run(fn: Callable[..., Any], *args: Any, **options: Any) -> tuple[Job, list[JobEvent]]:
        actor = dramatiq.actor(fn, broker=broker, queue_name=queue_name, actor_name=f"{fn.__name__}_{len(events)}",
                               min_backoff=10, max_backoff=20, **options)
        broker.emit_after("process_boot")
        worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=2)
        worker.start()
        try:
            message = actor.send(*args)
            wait_until(lambda: Job.select().where((Job.message_id == message.message_id)
                                                  & (Job.status == JobStatus.FAILED)).exists(),
                       timeout=30, message="the job to be recorded failed")
        finally:
            worker.stop()
        middleware.recorder.flush()
        with lock:
            mine = [event for event in events if event.message_id == message.message_id]
        return Job.get(Job.message_id == message.message_id), mine

    try:
        yield run
    finally:
        middleware.recorder.close()
        broker.close()


def test_the_row_keeps_the_traceback_retries_wrote_for_the_final_failure(run_jobs: Any) -> None:
    def pay(amount: int) -> None:
        total(amount)

    job, events = run_jobs(pay, 7, max_retries=0)
    final = job.get_payload()["options"]["traceback"]
    assert job.exception == final  # the same text, not written a second time
    assert final.endswith("RuntimeError: card declined for 7\n(as Retries wrote it)\n")
    assert FAILING_FRAME in final
    assert re.search(r"^\s+\^+\s*$", final, re.M), "Retries' text has the standard carets"
    assert [event.kind for event in events if event.exception is not None] == [Kind.FAILED]


def test_each_retried_attempt_and_the_final_failure_carry_their_own_traceback(run_jobs: Any) -> None:
    tries = iter(range(1, 10))

    def pay(amount: int) -> None:
        total(amount * 10 + next(tries))

    job, events = run_jobs(pay, 4, max_retries=2)
    ends = {event.attempt: event.exception for event in events if event.kind in (Kind.RETRIED, Kind.FAILED)}
    assert [event.kind for event in events if event.kind in (Kind.RETRIED, Kind.FAILED)] == [
        Kind.RETRIED, Kind.RETRIED, Kind.FAILED]
    for attempt in (1, 2, 3):
        assert ends[attempt] is not None
        assert ends[attempt].endswith(f"RuntimeError: card declined for {40 + attempt}\n(as Retries wrote it)\n")
        assert FAILING_FRAME in ends[attempt]
    # Each next attempt starts knowing the previous one's traceback (as Retries
    # sent it on, before the marker was added); the row keeps the last.
    started = {event.attempt: event.exception for event in events if event.kind is Kind.STARTED}
    assert started == {1: None, 2: ends[1].removesuffix(MARK), 3: ends[2].removesuffix(MARK)}
    assert (job.attempts, job.exception) == (3, ends[3])


def test_an_exception_the_actor_throws_is_written_by_watchtower(run_jobs: Any) -> None:
    def pay(amount: int) -> None:
        total(amount)

    job, _ = run_jobs(pay, 9, throws=(RuntimeError,))
    assert "traceback" not in job.get_payload()["options"]  # Retries wrote nothing
    exception = raised(lambda: total(9))
    assert job.exception is not None and job.exception.startswith("Traceback (most recent call last):\n")
    assert job.exception.endswith(FAILING_FRAME + "RuntimeError: card declined for 9\n")
    assert "(as Retries wrote it)" not in job.exception
    assert not re.search(r"^\s+\^+\s*$", job.exception, re.M), "Watchtower's own text has no carets"
    # The frames under the actor's call are the ones a direct call shows.
    assert job.exception.endswith(standard_without_carets(exception).split("in total\n", 1)[1])


def test_a_traceback_deeper_than_retries_writes_is_written_whole(run_jobs: Any) -> None:
    deep = nested(RETRIES_FRAMES + 10)

    def pay() -> None:
        deep()

    job, _ = run_jobs(pay, max_retries=0)
    retries_text = job.get_payload()["options"]["traceback"]
    assert FAILING_FRAME not in retries_text, "Retries' 30 frames stop short of the failure"
    assert job.exception.endswith(FAILING_FRAME + "RuntimeError: card declined for 0\n")
    assert job.exception.count(f'File "{NESTED}"') == RETRIES_FRAMES + 10


def test_a_chained_exception_keeps_both_tracebacks(run_jobs: Any) -> None:
    def pay() -> None:
        chained_cause()

    job, _ = run_jobs(pay, max_retries=0)
    text = job.exception
    assert text == job.get_payload()["options"]["traceback"]
    cause, effect = text.split("\nThe above exception was the direct cause of the following exception:\n\n")
    assert FAILING_FRAME + "RuntimeError: card declined for 1\n" in cause
    assert effect.startswith("Traceback (most recent call last):\n")
    assert effect.endswith("LookupError: no such card\n(as Retries wrote it)\n")


@pytest.mark.parametrize("options", [{"max_retries": 0}, {"throws": (RuntimeError,)}], ids=["retries", "throws"])
def test_a_huge_traceback_is_capped_to_its_end(run_jobs: Any, options: dict[str, Any]) -> None:
    def pay() -> None:
        raise RuntimeError("y" * (2 * EXCEPTION_LIMIT) + " the end")

    job, _ = run_jobs(pay, **options)
    assert len(job.exception) == len(TRUNCATED) + EXCEPTION_LIMIT
    assert job.exception.startswith(TRUNCATED)
    assert job.exception.rstrip("\n").endswith(("y the end", "y the end\n(as Retries wrote it)"))


def test_an_exception_the_worker_did_not_keep_is_written_at_once(tmp_path: Path, sqlite_url: str) -> None:
    """A hook caller that passes the exception without stuffing it into the message: the traceback is still recorded."""
    broker = StubBroker(middleware=[])  # no Retries: an attempt that raised has failed
    middleware = WatchtowerMiddleware(settings=load_settings(env={}, cwd=tmp_path,
                                                             overrides={"database_url": sqlite_url}))
    broker.add_middleware(middleware)
    events: list[JobEvent] = []
    middleware.listeners.append(events.append)
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="q")
    def pay() -> None:
        pass

    message = MessageProxy(pay.message())
    broker.emit_before("process_message", message)
    exception = raised(lambda: charge(3))
    middleware.after_process_message(broker, message, exception=exception)
    middleware.after_ack(broker, message)
    middleware.recorder.close()
    assert events[-1].kind is Kind.FAILED
    assert events[-1].exception is not None
    assert events[-1].exception.endswith(FAILING_FRAME + "RuntimeError: card declined for 3\n")
