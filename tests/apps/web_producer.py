"""A producer as teams run them: a WSGI app (served by gunicorn) and a script, sending :mod:`apps.sup_app`'s ``nap``.

The broker gets a WatchtowerMiddleware that records what is sent; its
settings come from the environment (``WATCHTOWER_CONFIG``,
``WATCHTOWER_METRICS_DIR``), as in any app.  ``GET /send`` sends one
message and answers with this process's pid;

    python -m apps.web_producer COUNT

sends COUNT messages, prints its pid and exits, as a cron job would.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from apps.sup_app import broker, nap
from watchtower import WatchtowerMiddleware

broker.add_middleware(WatchtowerMiddleware(register_worker=False))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") != "/send":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    nap.send(uuid.uuid4().hex, 0)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


if __name__ == "__main__":
    for _ in range(int(sys.argv[1])):
        nap.send(uuid.uuid4().hex, 0)
    print(os.getpid())
