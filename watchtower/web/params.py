"""Reading and checking what a request carries: query parameters, path ids, JSON bodies.

An empty text filter (``?status=&queue=``, as an HTML form sends it) means
"no filter"; an empty number is malformed.  Every check fails with a 400 (the request is malformed: a filter that is not
one of the allowed values, an id that cannot be an id, a body that is not
JSON) or a 422 (the body is JSON but says something impossible), and the
error names the parameter, what it got and what would be right.  Nothing
unchecked reaches the database: text is length-capped and free of control
characters and lone surrogates (PostgreSQL refuses NUL, MySQL refuses
surrogates: either would otherwise surface as a database error).
"""

from __future__ import annotations

import json
import re
from typing import Any

import falcon

__all__ = [
    "KnownParams",
    "query_text",
    "query_search",
    "query_int",
    "query_choice",
    "query_queue",
    "job_id",
    "worker_id",
    "json_object",
    "check_queue_name",
    "MAX_BODY_BYTES",
]

#: Bodies larger than this are refused with 413 before they are read.
MAX_BODY_BYTES = 64 * 1024

# C0 controls except tab, LF and CR; DEL; UTF-16 surrogates.
_BAD_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# Dramatiq's own rule for queue names (dramatiq.actor), capped at the column's length.
_QUEUE = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]{0,254}")
# Dramatiq's message ids are UUIDs; custom ids are allowed if they stay plain.
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Worker ids are made of host names, pids and random suffixes.
_WORKER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def bad_request(description: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="Bad Request", description=description)


def unprocessable(description: str) -> falcon.HTTPUnprocessableEntity:
    return falcon.HTTPUnprocessableEntity(title="Unprocessable Entity", description=description)


def _shown(value: str, limit: int = 40) -> str:
    """``value`` as it can safely appear in an error message."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(_BAD_CHARACTERS.sub("?", text))


class KnownParams:
    """Falcon middleware: refuse query parameters a resource does not name in ``query_params``.

    A misspelt filter (``?stauts=failed``) would otherwise be ignored and
    return every job, which looks like an answer.
    """

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if resource is None:
            return
        allowed: tuple[str, ...] = getattr(resource, "query_params", ())
        for name in req.params:
            if name not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes no query parameters"
                raise bad_request(f"unknown parameter {_shown(name)}: this route {takes}")


def query_text(req: falcon.Request, name: str, *, max_length: int) -> str | None:
    """The query parameter ``name`` as text, or None when it is absent or empty."""
    value = req.get_param(name)
    if value is None or value == "":
        return None
    if len(value) > max_length:
        raise bad_request(f"parameter {name!r} is {len(value)} characters long; at most {max_length} are allowed")
    if _BAD_CHARACTERS.search(value):
        raise bad_request(f"parameter {name!r} contains control characters: {_shown(value)}")
    return value


def query_search(req: falcon.Request, name: str, *, max_length: int) -> str | None:
    """Free text to search for: any characters, at most ``max_length`` of them."""
    value = req.get_param(name)
    if value is None or value == "":
        return None
    if len(value) > max_length:
        raise bad_request(f"parameter {name!r} is {len(value)} characters long; at most {max_length} are allowed")
    return value


def query_int(req: falcon.Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    """The query parameter ``name`` as a whole number in [minimum, maximum] (``default`` when absent)."""
    value = req.get_param(name)
    if value is None:
        return default
    # ASCII digits only (int() would take other scripts' digits too); the
    # length cap keeps int() from parsing a megabyte of digits.
    if len(value) > 12 or not (value.isascii() and value.isdigit()):
        raise bad_request(f"parameter {name!r} must be a whole number from {minimum} to {maximum}, not {_shown(value)}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise bad_request(f"parameter {name!r} must be from {minimum} to {maximum}, not {number}")
    return number


def query_cursor(req: falcon.Request, name: str) -> int | None:
    """The query parameter ``name`` as a cursor a previous page gave (a positive row id), or None."""
    value = req.get_param(name)
    if value is None or value == "":
        return None
    if len(value) > 18 or not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise bad_request(f"parameter {name!r} must be the next_cursor of a previous page, not {_shown(value)}")
    return int(value)


def query_choice(req: falcon.Request, name: str, choices: tuple[str, ...]) -> str | None:
    """The query parameter ``name``, which must be one of ``choices`` if given."""
    value = req.get_param(name)
    if value is None or value == "":
        return None
    if value not in choices:
        raise bad_request(f"parameter {name!r} must be one of {', '.join(choices)}, not {_shown(value)}")
    return value


def query_queue(req: falcon.Request, name: str = "queue") -> str | None:
    """A queue-name query parameter (Dramatiq's rules for queue names)."""
    value = req.get_param(name)
    if value is None or value == "":
        return None
    if not _QUEUE.fullmatch(value):
        raise bad_request(
            f"parameter {name!r} must be a queue name (a letter or '_', then letters, digits, '.', '_' or '-', "
            f"at most 255 characters), not {_shown(value)}"
        )
    return value


def check_queue_name(value: Any, field: str = "queue") -> str:
    """``value`` if it is a valid queue name, else a 422 naming ``field``."""
    if not isinstance(value, str) or not _QUEUE.fullmatch(value):
        raise unprocessable(
            f"{field!r} must be a queue name (a letter or '_', then letters, digits, '.', '_' or '-', "
            f"at most 255 characters), not {_shown(str(value)) if isinstance(value, str) else type(value).__name__}"
        )
    return value


def job_id(value: str) -> str:
    """A job id from the path: a message id (a UUID, or another plain id of at most 64 characters)."""
    if not _JOB_ID.fullmatch(value):
        raise bad_request(
            f"{_shown(value)} is not a job id: a job id is a message id such as "
            "'0b1c5f4e-8c5a-4d6e-9f0a-1b2c3d4e5f60' (letters, digits, '.', '_', ':' and '-', at most 64)"
        )
    return value


def worker_id(value: str) -> str:
    """A worker id from the path (letters, digits, '.', '_', ':', '@' and '-', at most 128)."""
    if not _WORKER_ID.fullmatch(value):
        raise bad_request(
            f"{_shown(value)} is not a worker id: letters, digits, '.', '_', ':', '@' and '-', at most 128 characters"
        )
    return value


def json_object(req: falcon.Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object of at most MAX_BODY_BYTES."""
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large", description=f"the body is {length} bytes; at most {MAX_BODY_BYTES} are accepted"
        )
    raw = req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large", description=f"the body is larger than {MAX_BODY_BYTES} bytes"
        )
    if not raw.strip():
        raise bad_request('the body must be a JSON object, such as {"queue": "default"}; it is empty')
    content_type = (req.content_type or "application/json").split(";", 1)[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported Media Type", description=f"the body must be application/json, not {content_type!r}"
        )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise bad_request(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise bad_request(f"the body must be a JSON object, not a JSON {type(body).__name__}")
    return body
