"""A Starlette app with the control API mounted under /watchtower through a2wsgi, no token.

    uvicorn --uds PATH apps.asgi_mount:app

Settings come from the environment (``WATCHTOWER_DATABASE_URL``...).
"""

from __future__ import annotations

from a2wsgi import WSGIMiddleware
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from watchtower import load_settings
from watchtower.web import create_app


async def home(request: object) -> PlainTextResponse:
    return PlainTextResponse("the host app")


api = create_app(load_settings(overrides={"http.prefix": ""}))
app = Starlette(routes=[Route("/", home), Mount("/watchtower", app=WSGIMiddleware(api))])
