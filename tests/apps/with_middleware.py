"""The basic app, plus a WatchtowerMiddleware of its own (as a user would add it)."""

from __future__ import annotations

from watchtower import WatchtowerMiddleware

from .basic import broker, work  # noqa: F401  (the actors)

middleware = WatchtowerMiddleware()
broker.add_middleware(middleware)
