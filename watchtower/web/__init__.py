"""The control API: a Falcon WSGI app to look at jobs and workers and steer them.

``create_app(settings)`` builds it; ``watchtower serve`` serves it with
waitress; a host application can mount it (see :mod:`watchtower.web.app`).
"""

from .app import create_app

__all__ = ["create_app"]
