"""A message as the ledger keeps it: the payload codec.

The producer's hook writes the whole message as text (Dramatiq's JSON, or
the app's own encoder's bytes in base64 when JSON cannot hold them), and
the job row and the API read it back.  :class:`SendEncoder` lets the
producer reuse the text the broker encoded instead of encoding twice.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import dramatiq

from .dramatiq_internals import q_name

__all__ = ["encode_message", "decode_message", "SendEncoder", "BASE64_PREFIX"]


def _unencodable(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _make_json() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"))``, with its C encoder made once.

    ``json.dumps`` builds a new C encoder (and a dict for its circular
    check) on every call, a large part of its cost for a small message in
    the producer's hook (benchmarks/RESULTS.md, second pass).  This one is built once, without the circular check:
    the broker has already encoded the message (its JSON encoder would have
    refused a circular one), and recursion that deep raises RecursionError,
    which encode_message handles like any other unencodable message.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return json.JSONEncoder(separators=(",", ":")).encode
    encoder = make(None, _unencodable, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    join = "".join
    return lambda value: join(encoder(value, 0))


_json = _make_json()

#: Prefix of a payload that could not be written as JSON (see encode_message).
BASE64_PREFIX = "base64:"


def encode_message(message: Any) -> str:
    """The whole message as text, as Dramatiq's JSON encoder would write it.

    Written directly rather than through ``message.encode()`` (cheaper,
    and this runs in the producer's hook; benchmarks/RESULTS.md, third pass).  An app that uses another
    encoder (pickle) may send arguments JSON cannot hold: those messages are
    kept in that encoder's bytes, base64-encoded behind ``base64:``.

    The queue is written canonical (``q``, not ``q.DQ``): a delayed message
    is enqueued as a copy addressed to the delay queue, but the message the
    ledger keeps (to send again later) belongs to its real queue.
    """
    queue = q_name(message.queue_name)
    try:
        return _json({
            "queue_name": queue,
            "actor_name": message.actor_name,
            "args": message.args,
            "kwargs": message.kwargs,
            "options": message.options,
            "message_id": message.message_id,
            "message_timestamp": message.message_timestamp,
        })
    except (TypeError, ValueError, RecursionError):
        if queue != message.queue_name:
            message = message.copy(queue_name=queue)
        return BASE64_PREFIX + base64.b64encode(message.encode()).decode("ascii")


class SendEncoder(dramatiq.JSONEncoder):
    """Dramatiq's JSON encoder, writing the same bytes, whose text the ledger reuses.

    A broker encodes every message it sends (``message.encode()``), and the
    ledger keeps the same text as the job's payload.  The middleware makes
    this Dramatiq's global encoder when the app uses the default
    :class:`dramatiq.JSONEncoder` (see ``WatchtowerMiddleware``): each
    thread remembers the last message it encoded, and the producer's hook
    takes that text (:meth:`sent_text`) instead of encoding the message a
    second time.  It is also what was sent: a producer that goes on
    changing the arguments it passed cannot change the ledger's copy.

    The bytes are ``json.dumps(data, separators=(",", ":"))`` as Dramatiq
    writes them, from a C encoder made once (tests hold the two equal);
    what that cannot encode goes to Dramatiq's own encoder, which raises
    its own error.  Decoding is Dramatiq's.
    """

    def __init__(self) -> None:
        self._sent = threading.local()

    def encode(self, data: dict[str, Any]) -> bytes:
        try:
            text = _json(data)
        except (TypeError, ValueError, RecursionError):
            return super().encode(data)
        self._sent.last = (data, text)
        return text.encode("utf-8")

    def sent_text(self, message: Any) -> str | None:
        """The text this thread encoded last, if that was ``message`` addressed to its canonical queue.

        Forgets it, so that it is taken once and the message's arguments
        are not kept alive.
        """
        last = getattr(self._sent, "last", None)
        if last is None:
            return None
        self._sent.last = None
        data, text = last
        # The options dict is the message's own (Message.copy makes a new
        # one): the same object means the text was written from this message.
        if data["options"] is not message.options or data["queue_name"] != q_name(message.queue_name):
            return None
        return text


def decode_message(payload: str) -> dict[str, Any]:
    """The message dict that :func:`encode_message` wrote."""
    if payload.startswith(BASE64_PREFIX):
        return dict(dramatiq.get_encoder().decode(base64.b64decode(payload[len(BASE64_PREFIX):])))
    return dict(json.loads(payload))
