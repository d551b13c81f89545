"""A FastAPI app with a login of its own (SessionMiddleware's signed cookie) and the API mounted by the
README's Starlette recipe.

Users: see :mod:`apps.host_users`.  Settings come from the environment
(``WATCHTOWER_DATABASE_URL``...).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware

from .host_users import is_admin, parse_form
from .readme_recipes import run_recipe

app = FastAPI()
app.add_middleware(SessionMiddleware, secret_key="the host's own secret")


@app.get("/", response_class=PlainTextResponse)
def home(request: Request) -> str:
    return f"hello {request.session.get('user', 'stranger')}"


@app.get("/login", response_class=PlainTextResponse)
def login_form() -> str:
    return "post username and password"


@app.post("/login")
async def login(request: Request) -> Response:
    form = parse_form(await request.body())
    admin = is_admin(form.get("username", ""), form.get("password", ""))
    if admin is None:
        return PlainTextResponse("wrong user name or password", status_code=401)
    request.session.update(user=form["username"], is_admin=admin)
    return RedirectResponse("/", status_code=303)


run_recipe("starlette", globals())
