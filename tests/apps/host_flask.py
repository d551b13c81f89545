"""A Flask app with a login of its own (a signed session cookie) and the API mounted by the README's recipe.

Users: see :mod:`apps.host_users`.  Settings come from the environment
(``WATCHTOWER_DATABASE_URL``...).
"""

from __future__ import annotations

import flask

from .host_users import is_admin
from .readme_recipes import run_recipe

app = flask.Flask(__name__)
app.secret_key = "the host's own secret"


@app.get("/")
def home() -> str:
    return f"hello {flask.session.get('user', 'stranger')}"


@app.get("/login")
def login_form() -> str:
    return '<form method="post"><input name="username"><input name="password" type="password"></form>'


@app.post("/login")
def login() -> flask.typing.ResponseReturnValue:
    name = flask.request.form.get("username", "")
    admin = is_admin(name, flask.request.form.get("password", ""))
    if admin is None:
        return "wrong user name or password", 401
    flask.session["user"] = name
    flask.session["is_admin"] = admin
    return flask.redirect("/", 303)


run_recipe("flask", globals())
