"""encode_message: the stored payload is the message as Dramatiq's JSON encoder writes it.

The hook writes it with a C encoder made once (not ``json.dumps`` per
call); these tests hold it to ``json.dumps`` text for any JSON value, and
to the base64 fallback for what JSON cannot hold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.encoder import PickleEncoder
from hypothesis import given, settings
from hypothesis import strategies as st

from watchtower.events import BASE64_PREFIX, decode_message, encode_message

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4),
    max_leaves=12,
)


def expected_text(message: dramatiq.Message) -> str:
    """What ``json.dumps`` writes for the message, queue name canonical."""
    data = message.asdict()
    data["queue_name"] = dramatiq.common.q_name(message.queue_name)
    return json.dumps(
        {key: data[key] for key in ("queue_name", "actor_name", "args", "kwargs", "options", "message_id",
                                    "message_timestamp")},
        separators=(",", ":"),
    )


@settings(max_examples=300, deadline=None)
@given(args=st.lists(json_values, max_size=4), kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=3))
def test_payload_text_is_what_json_dumps_writes(args: list[object], kwargs: dict[str, object]) -> None:
    message = dramatiq.Message(queue_name="emails.DQ", actor_name="send", args=tuple(args), kwargs=kwargs,
                               options={"eta": 5, "retries": 1})
    assert encode_message(message) == expected_text(message)


def test_nan_infinity_non_ascii_and_integer_keys_are_written_as_json_dumps_writes_them() -> None:
    message = dramatiq.Message(queue_name="q", actor_name="a",
                               args=(math.nan, -math.inf, "O'Brien \u00e9\u4e2d\U0001f600", {1: "one"}), kwargs={},
                               options={})
    text = encode_message(message)
    assert text == expected_text(message)
    assert "NaN" in text and "-Infinity" in text and "\\u00e9" in text and '"1":"one"' in text


@pytest.fixture
def pickle_encoder() -> Iterator[None]:
    previous = dramatiq.get_encoder()
    dramatiq.set_encoder(PickleEncoder())
    yield
    dramatiq.set_encoder(previous)


@pytest.mark.parametrize("kind", ["object", "circular"])
def test_what_json_cannot_hold_is_kept_in_the_apps_encoder_bytes(pickle_encoder: None, kind: str) -> None:
    value: object
    if kind == "object":
        value = {1, 2, 3}  # a set: pickle holds it, JSON does not
    else:
        value = []
        value.append(value)  # type: ignore[attr-defined]
    message = dramatiq.Message(queue_name="q.DQ", actor_name="a", args=(value,), kwargs={}, options={})
    payload = encode_message(message)
    assert payload.startswith(BASE64_PREFIX)
    decoded = decode_message(payload)
    assert decoded["queue_name"] == "q" and decoded["message_id"] == message.message_id
    if kind == "object":
        assert decoded["args"] == (value,)
    else:
        assert decoded["args"][0][0] is decoded["args"][0]
