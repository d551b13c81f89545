"""encode_message and SendEncoder: the stored payload is the message as Dramatiq's JSON encoder writes it.

The hook writes it with a C encoder made once (not ``json.dumps`` per
call), or takes the text the broker's encoder (a SendEncoder) wrote for
the same message; these tests hold both to ``json.dumps`` text for any
JSON value, to Dramatiq's own errors and to the base64 fallback for what
JSON cannot hold, and show that the ledger keeps what was sent.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import PickleEncoder
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.servers import unique
from watchtower import WatchtowerMiddleware, load_settings
from watchtower.models import Job
from watchtower.payload import BASE64_PREFIX, SendEncoder, decode_message, encode_message

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


@settings(max_examples=300, deadline=None)
@given(args=st.lists(json_values, max_size=4), kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=3))
def test_send_encoder_writes_the_bytes_dramatiqs_json_encoder_writes(
    args: list[object], kwargs: dict[str, object]
) -> None:
    message = dramatiq.Message(queue_name="q", actor_name="a", args=tuple(args), kwargs=kwargs, options={"x": 1})
    data = message.asdict()
    assert SendEncoder().encode(data) == dramatiq.JSONEncoder().encode(data)
    assert SendEncoder().decode(SendEncoder().encode(data)) == dramatiq.JSONEncoder().decode(
        dramatiq.JSONEncoder().encode(data))


@pytest.mark.parametrize("kind", ["object", "circular"])
def test_send_encoder_refuses_what_dramatiq_refuses_with_dramatiqs_error(kind: str) -> None:
    value: object
    if kind == "object":
        value = {1, 2, 3}
    else:
        value = []
        value.append(value)  # type: ignore[attr-defined]
    data = dramatiq.Message(queue_name="q", actor_name="a", args=(value,), kwargs={}, options={}).asdict()
    with pytest.raises(Exception) as expected:
        dramatiq.JSONEncoder().encode(data)
    with pytest.raises(type(expected.value), match=str(expected.value)):
        SendEncoder().encode(data)


def test_sent_text_is_given_once_for_the_message_encoded_last_in_this_thread() -> None:
    encoder = SendEncoder()
    message = dramatiq.Message(queue_name="q", actor_name="a", args=(1,), kwargs={}, options={})
    other = message.copy()  # same id, its own options: not the message encoded
    encoder.encode(message.asdict())
    assert encoder.sent_text(other) is None
    encoder.encode(message.asdict())
    seen_elsewhere: list[str | None] = []
    thread = threading.Thread(target=lambda: seen_elsewhere.append(encoder.sent_text(message)))
    thread.start()
    thread.join()
    assert seen_elsewhere == [None]
    assert encoder.sent_text(message) == encode_message(message)
    assert encoder.sent_text(message) is None  # taken once


def test_sent_text_of_a_delay_queue_copy_is_not_taken() -> None:
    encoder = SendEncoder()
    message = dramatiq.Message(queue_name="q.DQ", actor_name="a", args=(), kwargs={}, options={"eta": 1})
    encoder.encode(message.asdict())
    assert encoder.sent_text(message) is None  # the ledger keeps the canonical queue: encoded by the hook


@pytest.fixture
def default_encoder() -> Iterator[None]:
    previous = dramatiq.get_encoder()
    dramatiq.set_encoder(dramatiq.JSONEncoder())
    yield
    dramatiq.set_encoder(previous)


def test_the_ledger_keeps_what_was_sent_when_the_producer_changes_its_arguments_after(
    default_encoder: None, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    settings_ = load_settings(env={}, cwd=tmp_path, overrides={"database_url": url})
    broker = StubBroker()
    middleware = WatchtowerMiddleware(settings=settings_, worker_id="producer", register_worker=False)
    broker.add_middleware(middleware)
    assert type(dramatiq.get_encoder()) is SendEncoder
    queue = unique("q")
    items = ["first"]

    @dramatiq.actor(broker=broker, queue_name=queue)
    def collect(values: list[str]) -> None:
        pass

    sent = collect.send(items)
    items.append("added after send")
    delayed = collect.send_with_options(args=(["later"],), delay=60_000)
    try:
        assert middleware.recorder.flush(10)
        payloads = {job.message_id: job.get_payload() for job in Job.select()}
    finally:
        middleware.recorder.close()
        broker.close()
    assert payloads[sent.message_id]["args"] == [["first"]]
    assert payloads[sent.message_id] == decode_message(encode_message(dramatiq.Message(**{
        **sent.asdict(), "args": (["first"],)})))
    assert payloads[delayed.message_id]["queue_name"] == queue  # canonical, not the delay queue
    assert payloads[delayed.message_id]["args"] == [["later"]]


def test_an_apps_own_encoder_is_kept(pickle_encoder: None, tmp_path: Path) -> None:
    encoder = dramatiq.get_encoder()
    settings_ = load_settings(env={}, cwd=tmp_path, overrides={"database_url": f"sqlite:///{tmp_path}/l.db"})
    middleware = WatchtowerMiddleware(settings=settings_, worker_id="producer", register_worker=False)
    try:
        assert dramatiq.get_encoder() is encoder
    finally:
        middleware.recorder.close()
