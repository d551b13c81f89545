"""Helpers of the console's tests: a cookie-keeping client of the WSGI app, forms read from pages."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlencode

import falcon
import falcon.testing

from tests.support.web_api import TOKEN, web_settings
from watchtower.web import create_app

#: What a browser sends when it navigates to a page.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

CONSOLE = "/watchtower/console"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def csrf_of(page: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def text_of(page: str) -> str:
    """A page's text without its tags (entities decoded), whitespace folded."""
    inline = re.sub(r"</?(?:a|b|code|em|span|strong|time)\b[^>]*>", "", page)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


class Browser:
    """A falcon test client that keeps cookies as a browser does (by name; paths are the console's)."""

    def __init__(self, app: Any, *, remote_addr: str = "127.0.0.1", **headers: str) -> None:
        self.client = falcon.testing.TestClient(app)
        self.remote_addr = remote_addr
        self.headers = {"Accept": BROWSER_ACCEPT, **headers}
        self.cookies: dict[str, str] = {}

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(self.headers)
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        headers.update(extra or {})
        return headers

    def _keep(self, result: falcon.testing.Result) -> falcon.testing.Result:
        for name, cookie in result.cookies.items():
            expired = cookie.max_age == 0 or (cookie.expires is not None and cookie.expires.year < 2000)
            if expired or not cookie.value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = cookie.value
        return result

    def get(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> falcon.testing.Result:
        kwargs.setdefault("remote_addr", self.remote_addr)
        return self._keep(self.client.simulate_get(path, headers=self._headers(headers), **kwargs))

    def post(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None,
             **kwargs: Any) -> falcon.testing.Result:
        """Post a form as the console's pages do (the browser says: same origin)."""
        sent = {**FORM, "Sec-Fetch-Site": "same-origin", **(headers or {})}
        kwargs.setdefault("remote_addr", self.remote_addr)
        return self._keep(self.client.simulate_post(path, body=urlencode(fields), headers=self._headers(sent),
                                                    **kwargs))

    def csrf(self) -> str:
        """The CSRF token of this browser (a page is fetched first if it has none)."""
        if "watchtower_csrf" not in self.cookies:
            self.get(CONSOLE + "/login")
        return self.cookies["watchtower_csrf"]

    def act(self, path: str, headers: dict[str, str] | None = None, **fields: str) -> falcon.testing.Result:
        """Post one of the console's forms, with this browser's CSRF token."""
        return self.post(path, {"csrf": self.csrf(), **fields}, headers=headers)

    def log_in(self, token: str, next_page: str = "") -> falcon.testing.Result:
        return self.post(CONSOLE + "/login", {"csrf": self.csrf(), "token": token, "next": next_page})


def console_app(ledger: str, namespace: str, broker: Any = None, **settings: Any) -> falcon.App:
    """The API's app with the console, on ``ledger`` and a Redis bus under ``namespace``."""
    return create_app(web_settings(ledger, namespace, **settings), broker=broker)


def logged_in(app: falcon.App) -> Browser:
    """A browser of the console, logged in with the test token."""
    browser = Browser(app)
    assert browser.log_in(TOKEN).status_code == 303
    return browser
