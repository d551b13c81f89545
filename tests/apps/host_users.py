"""The users of the host apps (tests/test_web_host_auth.py): ``ada`` is an admin, ``bob`` is not."""

from __future__ import annotations

from urllib.parse import parse_qsl

USERS = {"ada": ("ada-pw", True), "bob": ("bob-pw", False)}


def is_admin(name: str, password: str) -> bool | None:
    """Whether the user is an admin; None for a wrong name or password."""
    known, admin = USERS.get(name, (None, False))
    return admin if known is not None and password == known else None


def parse_form(body: bytes) -> dict[str, str]:
    """A urlencoded form (Starlette's own parser needs python-multipart)."""
    return dict(parse_qsl(body.decode()))
