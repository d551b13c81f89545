"""The host apps of tests/apps/host_*.py (the API mounted behind a host's own login), served and visited."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.polling import DEADLINE

#: name -> (server kind, app); Django under both.
HOSTS = {
    "flask": ("wsgi", "apps.host_flask:app"),
    "django-wsgi": ("wsgi", "apps.host_django:wsgi_app"),
    "django-asgi": ("asgi", "apps.host_django:asgi_app"),
    "starlette": ("asgi", "apps.host_starlette:app"),
    "fastapi": ("asgi", "apps.host_fastapi:app"),
}


@dataclass
class Host:
    """A host app being served; each visitor is a browser of its own (its own cookies)."""

    base_url: str
    clients: list[httpx.Client] = field(default_factory=list)

    def visitor(self) -> httpx.Client:
        http = httpx.Client(base_url=self.base_url, timeout=DEADLINE)
        self.clients.append(http)
        return http


def listening_on(process: subprocess.Popen[str], log: Path) -> str:
    """The base URL that apps.serve_host prints, within the deadline."""
    assert process.stdout is not None
    stdout = process.stdout
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(DEADLINE)
    if not line or not line[0].startswith("listening on "):
        process.kill()
        process.wait()
        raise AssertionError(f"the host app did not start:\n{log.read_text()}")
    return line[0].split()[-1]


def log_in(http: httpx.Client, user: str, password: str) -> httpx.Response:
    """The host's own login form (Django's wants the CSRF token that the form's page set as a cookie)."""
    assert http.get("/login").status_code == 200
    form = {"username": user, "password": password}
    if "csrftoken" in http.cookies:
        form["csrfmiddlewaretoken"] = http.cookies["csrftoken"]
    return http.post("/login", data=form)
