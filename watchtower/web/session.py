"""The console's browser credentials: a signed session cookie and a CSRF token.

A browser cannot send the API's bearer token by itself, so the console's
login page takes the token once and answers with a **session cookie**:

- ``watchtower_session``: ``<expiry>.<nonce>.<signature>``, signed with
  HMAC-SHA256 under a key derived from ``http.token``.  Nothing is kept on
  the server, so every process serving the app (a supervisor, ``watchtower
  serve``, several web workers of a host) accepts the sessions of the
  others; changing the token ends every session at once.  It expires after
  ``SESSION_SECONDS`` (the expiry is inside the signed text: an old cookie
  that a browser kept is refused too).  ``HttpOnly`` (no script reads it),
  ``SameSite=Lax`` (another site's form or script never sends it; a link
  from another site to a page still finds the user logged in), ``Secure``
  when the page was served over HTTPS, and its ``Path`` is the console's.

Every state-changing request of the console (login, logout, retry, delete,
worker commands) is checked against cross-site forgery twice, whoever let
it in (session, the host's ``authorize`` hook, or loopback without a token):

- a **CSRF token**: the ``watchtower_csrf`` cookie (random, set by the first
  page the browser gets) must match the ``csrf`` field of the form (in
  constant time).  Another site can make the browser send the cookie but
  can neither read it nor guess it for the form;
- the browser's own word on where the request comes from: refused when
  ``Sec-Fetch-Site`` is anything but ``same-origin`` (or ``none``), or, from
  a browser too old to send that, when ``Origin`` names another host than
  ``Host``.

The double check also covers the token-less mode, where a page of any site
could otherwise make a local browser post to ``127.0.0.1``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import falcon

__all__ = [
    "SESSION_COOKIE",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_SECONDS",
    "SessionSigner",
    "csrf_cookie",
    "new_csrf_token",
    "csrf_matches",
    "set_cookie",
    "clear_cookie",
]

SESSION_COOKIE = "watchtower_session"
CSRF_COOKIE = "watchtower_csrf"
#: The form field that carries the CSRF token.
CSRF_FIELD = "csrf"
#: How long a login lasts.
SESSION_SECONDS = 12 * 3600
# Cookie values are base64url text: anything else is not one of ours.
_TOKEN_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SessionSigner:
    """Makes and checks session cookie values under a key derived from the API token."""

    def __init__(self, token: str, *, clock: Callable[[], float] = time.time) -> None:
        # A key of its own, not the token: the cookie never carries anything
        # from which the token could be recovered or tried offline faster
        # than HMAC allows.
        self._key = hmac.new(token.encode("utf-8"), b"watchtower console session v1", hashlib.sha256).digest()
        self._clock = clock

    def _signature(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode("ascii"), hashlib.sha256).digest())

    def issue(self, seconds: int = SESSION_SECONDS) -> str:
        """A new session's cookie value, valid for ``seconds``."""
        text = f"{int(self._clock()) + seconds}.{_b64(secrets.token_bytes(16))}"
        return f"{text}.{self._signature(text)}"

    def valid(self, value: str | None) -> bool:
        """Whether ``value`` is a session this key signed and that has not expired."""
        if not value or value.count(".") != 2 or not value.isascii():
            return False
        expiry, nonce, signature = value.split(".")
        if not hmac.compare_digest(signature, self._signature(f"{expiry}.{nonce}")):
            return False
        return expiry.isdigit() and int(expiry) > self._clock()


def new_csrf_token() -> str:
    """A fresh random CSRF token (the cookie's value and the forms' field)."""
    return _b64(secrets.token_bytes(_TOKEN_BYTES))


def csrf_cookie(req: falcon.Request) -> str | None:
    """The request's CSRF cookie if it looks like one of ours."""
    values = req.get_cookie_values(CSRF_COOKIE) or []
    for value in values:
        if value.isascii() and 40 <= len(value) <= 64:
            return value
    return None


def csrf_matches(req: falcon.Request, submitted: str | None) -> bool:
    """Whether the form's token is the request's CSRF cookie."""
    cookie = csrf_cookie(req)
    if cookie is None or not submitted or not submitted.isascii():
        return False
    return hmac.compare_digest(cookie.encode("ascii"), submitted.encode("ascii"))


def is_https(req: falcon.Request) -> bool:
    """Whether the browser reached the console over HTTPS (directly or through a proxy that says so)."""
    return req.scheme == "https" or req.forwarded_scheme == "https"


def set_cookie(req: falcon.Request, resp: falcon.Response, name: str, value: str, *, path: str,
               max_age: int | None) -> None:
    """Set one of the console's cookies: HttpOnly, SameSite=Lax, Secure over HTTPS, scoped to ``path``."""
    resp.set_cookie(name, value, max_age=max_age, path=path, secure=is_https(req), http_only=True, same_site="Lax")


def clear_cookie(req: falcon.Request, resp: falcon.Response, name: str, *, path: str) -> None:
    """Tell the browser to drop one of the console's cookies."""
    resp.unset_cookie(name, path=path, same_site="Lax")
