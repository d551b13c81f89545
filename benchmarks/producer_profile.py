"""Where a producer's time goes when Watchtower records its sends.

    python3 benchmarks/producer_profile.py [--messages 10000] [--rounds 6]

benchmarks/throughput.py measures the enqueue rate as users get it; this
script takes the difference apart.  Each round runs these variants, each in
a fresh child process, in rotating order (a Redis broker, ``--messages``
no-op sends from one thread, a SQLite ledger):

- ``bare``: Dramatiq alone;
- ``hook only``: the middleware, its recorder not writing during the sends
  (flush interval and batch size out of reach; the rows are written after);
- ``no writes``: the recorder drains its buffer as usual but writes nothing;
- ``sqlite nice 0``: writing to SQLite, the flusher thread at the
  producer's own priority (``recorder.nice = 0``);
- ``sqlite``: everything as shipped (the flusher 10 steps nicer).

Per variant (medians of the rounds): the enqueue rate and its ratio to bare
in the same round; the CPU time of the producer's own thread
(``time.thread_time``) per send; and, for the Watchtower variants, the time
spent inside the middleware's ``after_enqueue`` per send, timed inside the
real send loop, with its parts (the payload: the text the broker's
encoder wrote, or the hook's own encoding of it; the event, the recorder's
append, the metrics listener); and, for every variant, the broker's own
``message.encode()`` (outside the hook: Dramatiq's JSONEncoder for bare,
Watchtower's byte-identical SendEncoder otherwise).  A hot loop of the
broker's encode and the hook (``--hot``) shows what the same code costs
with warm caches, beside Dramatiq's JSONEncoder alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from typing import Any

from harness import REDIS_URL

# benchmarks/throughput.py: the same rounds, pairing and clean-up.
from throughput import delete_namespace, paired_ratio, rotating_rounds

VARIANTS = ("bare", "hook only", "no writes", "sqlite nice 0", "sqlite")


def child(variant: str, database_url: str, messages: int) -> dict[str, Any]:
    """One measurement, in this process."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    namespace = f"wtprofile_{uuid.uuid4().hex[:10]}"
    broker = RedisBroker(url=REDIS_URL, namespace=namespace)
    middleware = None
    parts: dict[str, float] = {}
    clock = time.perf_counter

    def timed(name: str, function: Any) -> Any:
        parts[name] = 0.0

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return function(*args, **kwargs)
            finally:
                parts[name] += clock() - started
        return wrapper

    if variant != "bare":
        import watchtower.middleware as hooks
        import watchtower.recorder as recording
        from watchtower import WatchtowerMiddleware, store
        from watchtower.config import Settings

        options: dict[str, Any] = {"database_url": database_url}
        if variant == "hook only":
            options.update(recorder_flush_interval=3600.0, recorder_batch_size=10 * messages)
        if variant == "sqlite nice 0":
            options.update(recorder_nice=0)
        if variant == "no writes":
            recording.write_batch = lambda *args, **kwargs: None  # type: ignore[assignment]
        middleware = WatchtowerMiddleware(settings=Settings(**options))
        broker.add_middleware(middleware)
        store.connect(database_url)
        import watchtower.events as events

        middleware.after_enqueue = timed("hook", middleware.after_enqueue)  # type: ignore[method-assign]
        events.SendEncoder.sent_text = timed("payload (sent text)", events.SendEncoder.sent_text)  # type: ignore[method-assign]
        hooks.encode_message = timed("payload JSON (own encoding)", hooks.encode_message)
        middleware._event = timed("event", middleware._event)  # type: ignore[method-assign]
        middleware.recorder.record = timed("recorder append", middleware.recorder.record)  # type: ignore[method-assign]
        middleware.listeners[:] = [timed("metrics listener", listener) for listener in middleware.listeners]
    # Outside the hook: the broker's own message.encode() (Watchtower's SendEncoder, or Dramatiq's JSONEncoder).
    encoder = dramatiq.get_encoder()
    encoder.encode = timed("broker encode", encoder.encode)  # type: ignore[method-assign]
    broker.emit_after("process_boot")

    @dramatiq.actor(queue_name="profile", broker=broker, max_retries=0)
    def noop(i: int) -> None:
        return None

    try:
        for i in range(200):  # warm-up: connections, first metric objects
            noop.send(i)
        parts.update({name: 0.0 for name in parts})
        thread_started, started = time.thread_time(), time.perf_counter()
        for i in range(messages):
            noop.send(i)
        elapsed = time.perf_counter() - started
        thread_cpu = time.thread_time() - thread_started
        if middleware is not None:
            middleware.recorder.flush(timeout=120)
        return {
            "rate": messages / elapsed,
            "thread_us": thread_cpu / messages * 1e6,
            "parts_us": {name: seconds / messages * 1e6 for name, seconds in parts.items()},
        }
    finally:
        delete_namespace(namespace)


def hot(messages: int) -> dict[str, float]:
    """The broker's encode and the hook in a tight loop (a stub broker, the recorder not writing): warm caches."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from watchtower import WatchtowerMiddleware
    from watchtower.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        broker = StubBroker()
        middleware = WatchtowerMiddleware(settings=Settings(
            database_url=f"sqlite:///{tmp}/hot.db", recorder_flush_interval=3600.0,
            recorder_batch_size=10 * messages, recorder_buffer_size=10 * messages))
        broker.add_middleware(middleware)

        @dramatiq.actor(queue_name="profile", broker=broker, max_retries=0)
        def noop(i: int) -> None:
            return None

        sent = [noop.message(i).copy(options={"redis_message_id": str(uuid.uuid4())}) for i in range(messages)]
        # What a send adds to Dramatiq's own encode: the broker's encode (a
        # SendEncoder here) and the hook; against Dramatiq's JSONEncoder alone.
        encoder, plain = dramatiq.get_encoder(), dramatiq.JSONEncoder()
        started = time.perf_counter()
        for message in sent:
            plain.encode(message._asdict())
        bare = time.perf_counter() - started
        started = time.perf_counter()
        for message in sent:
            encoder.encode(message._asdict())
            middleware.after_enqueue(broker, message, None)
        elapsed = time.perf_counter() - started
        middleware.recorder.close()
    return {"hook_us": elapsed / messages * 1e6, "bare_us": bare / messages * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--hot", action="store_true", help="also time the hook in a tight loop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.database_url, args.messages)))
        return

    results = rotating_rounds(__file__, VARIANTS, args.rounds, lambda variant, url: [
        "--messages", str(args.messages), "--database-url", url,
    ])

    print(f"\n{args.messages:,} sends from one thread, Redis broker, SQLite ledger; medians of {args.rounds} rounds\n")
    print("| variant | enqueue msg/s | ratio (paired) | producer thread CPU per send (µs) | in the hook per send (µs) "
          "| of which |")
    print("|---|---|---|---|---|---|")
    bare = results["bare"]
    for variant in VARIANTS:
        runs = results[variant]
        ratio = paired_ratio(runs, bare, "rate")
        parts = {name: statistics.median(run["parts_us"][name] for run in runs) for name in runs[0]["parts_us"]}
        hook = parts.pop("hook", None)
        print(f"| {variant} | {statistics.median(run['rate'] for run in runs):.0f} | {ratio:.2f} "
              f"| {statistics.median(run['thread_us'] for run in runs):.1f} "
              f"| {'-' if hook is None else f'{hook:.1f}'} "
              f"| {', '.join(f'{name} {value:.1f}' for name, value in parts.items()) or '-'} |")
    if args.hot:
        warm = hot(50_000)
        print(f"\nIn a tight loop (warm caches), the broker's encode and the hook: {warm['hook_us']:.1f} µs a send; "
              f"Dramatiq's JSONEncoder alone: {warm['bare_us']:.1f} µs")


if __name__ == "__main__":
    main()
