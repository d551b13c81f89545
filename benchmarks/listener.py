"""What counting one job event costs: the metrics listener's call, in memory and in multiprocess mode.

    python3 benchmarks/listener.py

Runs itself twice: once with the values in memory, once with them in mmap
files of a temporary directory (``metrics_dir``, as in a supervised
worker).  Prints microseconds per call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time


def measure(calls: int = 100_000) -> None:
    from watchtower.events import JobEvent, Kind
    from watchtower.metric_listeners import JobMetrics
    from watchtower.metrics import process_metrics

    process_metrics(os.environ.get("WATCHTOWER_METRICS_DIR"))
    listen = JobMetrics()
    events = {
        "enqueued": JobEvent("m", Kind.ENQUEUED, 1, 0, "default", "task", "redis", 0),
        "started": JobEvent("m", Kind.STARTED, 1, 0, "default", "task", "redis", 0, started_at=2000, ready_at=1000),
        "completed": JobEvent("m", Kind.COMPLETED, 1, 0, "default", "task", "redis", 0, started_at=2000, duration=0.01),
    }
    for event in events.values():
        listen(event)  # the labelled children are made once
    mode = "multiprocess" if process_metrics().directory else "memory"
    for name, event in events.items():
        started = time.perf_counter()
        for _ in range(calls):
            listen(event)
        print(f"| {mode} | {name} | {(time.perf_counter() - started) / calls * 1e6:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        measure()
    else:
        print("| values | event | us per call |\n|---|---|---|", flush=True)
        subprocess.run([sys.executable, __file__, "--child"], check=True)
        with tempfile.TemporaryDirectory() as directory:
            subprocess.run([sys.executable, __file__, "--child"], check=True,
                           env={**os.environ, "WATCHTOWER_METRICS_DIR": directory})
