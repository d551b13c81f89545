"""A Starlette app with a login of its own (SessionMiddleware's signed cookie) and the API mounted by the
README's recipe, after the app was built.

Users: see :mod:`apps.host_users`.  Settings come from the environment
(``WATCHTOWER_DATABASE_URL``...).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from .host_users import is_admin, parse_form
from .readme_recipes import run_recipe


async def home(request: Request) -> Response:
    return PlainTextResponse(f"hello {request.session.get('user', 'stranger')}")


async def login(request: Request) -> Response:
    if request.method == "GET":
        return PlainTextResponse("post username and password")
    form = parse_form(await request.body())
    admin = is_admin(form.get("username", ""), form.get("password", ""))
    if admin is None:
        return PlainTextResponse("wrong user name or password", status_code=401)
    request.session.update(user=form["username"], is_admin=admin)
    return RedirectResponse("/", status_code=303)


app = Starlette(
    routes=[Route("/", home), Route("/login", login, methods=["GET", "POST"])],
    middleware=[Middleware(SessionMiddleware, secret_key="the host's own secret")],
)

run_recipe("starlette", globals())
