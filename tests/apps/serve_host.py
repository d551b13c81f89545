"""Serve a host app on a free loopback port until terminated.

    python -m apps.serve_host wsgi|asgi MODULE:NAME

WSGI apps run under werkzeug's threaded server, ASGI apps under uvicorn.
Prints ``listening on http://127.0.0.1:PORT`` once the socket listens.
"""

from __future__ import annotations

import importlib
import socket
import sys

kind, target = sys.argv[1:3]
module, _, name = target.partition(":")
app = getattr(importlib.import_module(module), name)

if kind == "wsgi":
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"listening on http://127.0.0.1:{server.port}", flush=True)
    server.serve_forever()
else:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning")).run(sockets=[sock])
