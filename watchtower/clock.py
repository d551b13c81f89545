"""Time as the ledger stores it: integer milliseconds since the epoch, and UTC day numbers.

One portable, sortable column type on SQLite, PostgreSQL and MySQL; read
back as timezone-aware UTC datetimes.  A job row's ``queued_day`` (the
day its message was first enqueued) is part of its key, so that old days
can be pruned by index range.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["now_ms", "to_datetime", "to_ms", "DAY_MS", "day_of"]


def now_ms() -> int:
    """The current time in epoch milliseconds, the unit of every time column."""
    return time.time_ns() // 1_000_000


def to_datetime(ms: int | None) -> datetime | None:
    """Epoch milliseconds to an aware UTC datetime."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(value: datetime | int | float | None) -> int | None:
    """An aware or naive-UTC datetime, or a number of ms, to epoch milliseconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return int(value.timestamp() * 1000)
    return int(value)


DAY_MS = 86_400_000


def day_of(ms: int) -> int:
    """The UTC day number of epoch milliseconds ``ms``, truncated toward zero as SQL's integer division is."""
    return ms // DAY_MS if ms >= 0 else -(-ms // DAY_MS)
