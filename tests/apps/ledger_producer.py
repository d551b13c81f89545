"""A producer process: sends ``COUNT`` messages of :mod:`apps.ledger_app` and exits.

    python -m apps.ledger_producer PRODUCER COUNT

It never flushes the ledger itself: its recorder writes what is left when
the interpreter exits.
"""

from __future__ import annotations

import sys

from apps.ledger_app import count_run

producer, count = int(sys.argv[1]), int(sys.argv[2])
for number in range(count):
    count_run.send(producer, number)
print(f"producer {producer} sent {count}")
