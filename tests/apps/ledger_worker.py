"""One worker process of :mod:`apps.ledger_app`: ``python -m apps.ledger_worker``.

Prints ``ready`` once it consumes, runs until its stdin closes, then stops
the worker gracefully (which flushes the ledger) and exits.
"""

from __future__ import annotations

import sys

import dramatiq

from apps.ledger_app import broker

broker.emit_after("process_boot")
worker = dramatiq.Worker(broker, worker_timeout=100, worker_threads=1)
worker.start()
print("ready", flush=True)
sys.stdin.read()
worker.stop()
