"""Waiting for something with a deadline: the tests poll, they never sleep a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: Seconds to wait for anything a worker or supervisor process does.
DEADLINE = 30.0


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)


def stays(predicate: Any, seconds: float) -> bool:
    """``predicate`` holds throughout ``seconds`` (a negative can only be watched for a while)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not predicate():
            return False
        time.sleep(0.1)
    return True
