"""The pool's bookkeeping without processes: restart backoff, worker options, worker ids."""

from __future__ import annotations

import pytest

from watchtower.config import SupervisorSettings
from watchtower.errors import WorkerError
from watchtower.pool import RestartPolicy, check_options, check_queues, new_worker_id, worker_options


def test_a_process_that_keeps_dying_at_once_waits_longer_and_longer() -> None:
    policy = RestartPolicy()
    failures, waits = 0, []
    for _ in range(12):
        failures = policy.failures_after(failures, lifetime=0.5)
        waits.append(policy.delay(failures))
    assert waits == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert [policy.is_crashlooping(n) for n in (1, 2, 3, 12)] == [False, False, True, True]


def test_a_crash_loop_costs_a_few_starts_a_minute_once_the_first_are_past() -> None:
    policy = RestartPolicy()
    clock, failures, starts = 0.0, 0, [0.0]
    while clock < 600:
        clock += 1.0  # each attempt dies after a second
        failures = policy.failures_after(failures, lifetime=1.0)
        clock += policy.delay(failures)
        starts.append(clock)
    last_five_minutes = [t for t in starts if t >= 300]
    assert len(last_five_minutes) <= 6
    assert len([t for t in starts if t < 60]) <= 8


def test_a_process_that_lived_long_starts_the_count_again() -> None:
    policy = RestartPolicy(quick=10)
    failures = 0
    for _ in range(5):
        failures = policy.failures_after(failures, lifetime=1)
    assert policy.is_crashlooping(failures)
    failures = policy.failures_after(failures, lifetime=3600)
    assert failures == 1 and policy.delay(failures) == 0 and not policy.is_crashlooping(failures)


def test_worker_options_are_checked_by_name_kind_and_range() -> None:
    assert check_options({"tries": 5, "timeout": 120, "sleep": 0.5, "rest": 0, "threads": 2, "memory": 64}) == {
        "tries": 5, "timeout": 120.0, "sleep": 0.5, "rest": 0.0, "threads": 2, "memory": 64,
    }
    assert check_options(None) == {}
    bad = [
        ({"retries": 1}, "unknown worker option 'retries'"),
        ({"timeout": -1}, "'timeout' must be from 0 to 604800, not -1"),
        ({"threads": 0}, "'threads' must be from 1 to 256, not 0"),
        ({"threads": 2.0}, "'threads' must be a whole number from 1 to 256, not 2.0"),
        ({"tries": 1.5}, "'tries' must be a whole number"),
        ({"sleep": "3"}, "'sleep' must be a number"),
        ({"memory": True}, "'memory' must be a whole number from 0 to 1048576, not True"),
        ({"rest": float("nan")}, "'rest' must be a number from 0 to 3600, not nan"),
        (["tries"], "must be a mapping"),
    ]
    for options, message in bad:
        with pytest.raises(WorkerError, match=message):
            check_options(options)  # type: ignore[arg-type]


def test_queues_and_defaults() -> None:
    assert check_queues("emails") == ("emails",)
    assert check_queues(["a", "b"]) == ("a", "b")
    for wrong in ("", [], [""], 3, None):
        with pytest.raises(WorkerError, match="queue must be"):
            check_queues(wrong)
    pool = SupervisorSettings(tries=4, timeout=30.0, threads=2)
    merged = worker_options(pool, {"timeout": 5.0})
    assert merged == {"tries": 4, "timeout": 5.0, "memory": 128, "sleep": 3.0, "rest": 0.0, "threads": 2}


def test_worker_ids_name_host_supervisor_and_number_and_fit_the_column() -> None:
    first, second = new_worker_id("web-1", "emails", 7), new_worker_id("web-1", "emails", 7)
    assert first.startswith("web-1-emails-7-") and first != second
    assert len(new_worker_id("h" * 255, "s" * 128, 10**9)) <= 128
