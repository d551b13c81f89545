"""A stream of demo jobs:
``python examples/demo_stream.py [--rate 4] [--duration S] [--kinds K,...] [--metrics-port P]``.

Sends the demo app's jobs (see ``demo_app.py``) at ``--rate`` jobs a second
in a fixed cycle of twenty, so that every kind shows up within the first
twenty jobs: mostly fast ones, some slow, flaky (one retry each), failing
(retried, then failed for good), delayed (an eta a few seconds ahead) and
expired ones (``max_age`` of 1 ms: Dramatiq's AgeLimit skips them).

The jobs are enqueued through the demo app's broker, so the ledger records
them as pending before a worker starts them, and ``watchtower_jobs_enqueued_total``
counts them in this process: ``--metrics-port`` serves them at ``/metrics``
(``0`` picks a free port; the URL is printed) for Prometheus to scrape, as a
web app that sends jobs would.

Stops on SIGTERM or SIGINT (or after ``--duration`` seconds) and writes what
the ledger has not yet received before it exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, ModuleType

logger = logging.getLogger("demo_stream")


def senders(app: ModuleType) -> dict[str, Callable[[int], object]]:
    """How to send one job of each kind with the demo app (n numbers the jobs)."""
    return {
        "fast": lambda n: app.fast.send(n),
        "slow": lambda n: app.slow.send(1.0 + n % 3),
        "flaky": lambda n: app.flaky.send(n),
        "failing": lambda n: app.failing.send(n),
        "delayed": lambda n: app.fast.send_with_options(args=(n,), delay=3000),
        "expired": lambda n: app.fast.send_with_options(args=(n,), max_age=1),
    }


#: One cycle of the stream: every kind within its first eleven jobs.
CYCLE = (
    "fast", "slow", "flaky", "failing", "fast", "fast", "delayed", "flaky", "fast", "fast",
    "expired", "slow", "fast", "flaky", "fast", "fast", "fast", "fast", "fast", "fast",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Send a stream of demo jobs to the demo app's broker.")
    parser.add_argument("--rate", type=float, default=4.0, help="jobs a second (default 4)")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run)")
    parser.add_argument("--kinds", default=",".join(dict.fromkeys(CYCLE)),
                        help="the kinds of jobs to send, comma-separated (default: all of them, %(default)s); "
                             "fast,slow,delayed is a stream without failures")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address of this process's /metrics")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve this process's metrics (jobs enqueued) on this port; 0 picks a free one")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error("--rate must be above 0")
    args.kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    unknown = sorted(set(args.kinds) - set(CYCLE))
    if unknown or not args.kinds:
        parser.error(f"--kinds: {', '.join(unknown) or 'none given'}; choose among {', '.join(dict.fromkeys(CYCLE))}")
    return args


def serve_metrics(app: ModuleType, host: str, port: int) -> str:
    """Serve this process's own metrics; returns the URL."""
    from watchtower.metrics_server import start_metrics_server

    # Only what this process counts: worker and queue-depth gauges come from
    # the supervisors' scrapes, and serving them here too (they are read
    # from the ledger and the broker) would count them twice in any sum.
    own = dataclasses.replace(app.middleware.settings, database_url="", app=None, metrics_dir=None)
    return start_metrics_server(own, host=host, port=port).url


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # Imported here, not at the top: importing the app sets up its broker and
    # its ledger recorder, which parsing the arguments does not need.
    import demo_app

    send = senders(demo_app)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.metrics_port is not None:
        print(f"demo stream metrics at {serve_metrics(demo_app, args.metrics_host, args.metrics_port)}", flush=True)
    print(f"sending demo jobs at {args.rate:g}/s to {demo_app.REDIS_URL} (namespace {demo_app.NAMESPACE})",
          flush=True)

    started = time.monotonic()
    interval = 1.0 / args.rate
    sent = 0
    cycle = [kind for kind in CYCLE if kind in args.kinds]
    for n, kind in zip(itertools.count(), itertools.cycle(cycle)):
        due = started + n * interval
        if args.duration is not None and due - started >= args.duration:
            break
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        try:
            send[kind](n)
            sent += 1
        except Exception as error:  # the broker away for a moment: say so, keep going
            logger.warning("cannot send %s job %d: %s", kind, n, error)
    demo_app.middleware.recorder.flush(timeout=10)
    print(f"sent {sent} demo jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
