"""Rescuer.put_back on a real Redis: exactly a dead consumer's messages go back, atomically.

The consumers are Dramatiq's own (``broker.consume``), named the way a
``watchtower worker`` names them (``name_consumers``), on brokers with
Dramatiq's default heartbeat timeout and maintenance chance.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAINTENANCE_CHANCE, RedisBroker
from dramatiq.brokers.stub import StubBroker

from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL
from watchtower import dramatiq_internals as internals
from watchtower import store
from watchtower.clock import day_of, now_ms
from watchtower.events import PHASE_STARTED
from watchtower.ledger import mark_lost
from watchtower.models import Job
from watchtower.rescue import PutBack, Rescuer, name_consumers
from watchtower.statuses import JobStatus


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


def broker_named(namespace: str, worker_id: str) -> RedisBroker:
    broker = RedisBroker(url=REDIS_URL, namespace=namespace, middleware=[])
    assert (broker.heartbeat_timeout, broker.maintenance_chance) == (
        DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAINTENANCE_CHANCE,
    )
    name_consumers(broker, worker_id)
    return broker


def send(broker: dramatiq.Broker, queue: str, count: int, **options: Any) -> list[dramatiq.Message]:
    broker.declare_queue(queue)
    return [
        broker.enqueue(dramatiq.Message(queue_name=queue, actor_name="a", args=(i,), kwargs={}, options={}), **options)
        for i in range(count)
    ]


def fetch(broker: RedisBroker, queue: str, count: int) -> list[Any]:
    """``count`` messages taken by one consumer of ``broker`` and never acked (the consumer is left open)."""
    consumer = broker.consume(queue, prefetch=count, timeout=100)
    taken: list[Any] = []
    wait_until(lambda: taken.append(next(consumer)) or len([m for m in taken if m]) >= count, 30,
               message=f"{count} messages fetched")
    return [m for m in taken if m]


def ready_ids(client: redis.Redis, namespace: str, queue: str) -> list[str]:
    return [i.decode() for i in client.lrange(internals.ready_key(namespace, queue), 0, -1)]


def redis_id(message: Any) -> str:
    return str(message.options[internals.REDIS_MESSAGE_ID])


def test_the_dead_consumers_messages_go_back_first_and_no_one_elses(
    redis_namespace: str, queue_name: str, client: redis.Redis
) -> None:
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    dead, alive = (broker_named(redis_namespace, "host-a-default-1-aaaaaa"),
                   broker_named(redis_namespace, "host-a-default-2-bbbbbb"))
    sent = send(producer, queue_name, 6)
    held_by_dead = fetch(dead, queue_name, 3)
    held_by_alive = fetch(alive, queue_name, 2)
    waiting = ready_ids(client, redis_namespace, queue_name)
    assert len(waiting) == 1
    delayed = send(producer, queue_name, 1, delay=3_600_000)
    held_delayed = fetch(dead, f"{queue_name}.DQ", 1)
    assert [m.message_id for m in held_delayed] == [delayed[0].message_id]
    heartbeats = internals.heartbeats_key(redis_namespace)
    assert client.zscore(heartbeats, "host-a-default-1-aaaaaa") is not None

    result = Rescuer(broker=producer).put_back("host-a-default-1-aaaaaa", [queue_name])

    assert result == PutBack(requeued=4)
    back = ready_ids(client, redis_namespace, queue_name)
    assert sorted(back[:3]) == sorted(redis_id(m) for m in held_by_dead)  # at the head: they run next
    assert back[3:] == waiting
    assert ready_ids(client, redis_namespace, f"{queue_name}.DQ") == [redis_id(held_delayed[0])]
    for consumed in (queue_name, f"{queue_name}.DQ"):
        assert not client.exists(internals.ack_key(redis_namespace, "host-a-default-1-aaaaaa", consumed))
    assert client.smembers(internals.ack_key(redis_namespace, "host-a-default-2-bbbbbb", queue_name)) == {
        redis_id(m).encode() for m in held_by_alive
    }
    assert client.zscore(heartbeats, "host-a-default-1-aaaaaa") is None
    assert client.zscore(heartbeats, "host-a-default-2-bbbbbb") is not None
    # A second rescue finds nothing: what came back is not duplicated.
    assert Rescuer(broker=producer).put_back("host-a-default-1-aaaaaa", [queue_name]) == PutBack()
    assert len(ready_ids(client, redis_namespace, queue_name)) == 4
    assert {m.message_id for m in sent} == {
        dramatiq.Message.decode(client.hget(internals.messages_key(redis_namespace, queue_name), i)).message_id
        for i in ready_ids(client, redis_namespace, queue_name) + [redis_id(m) for m in held_by_alive]
    }
    for broker in (producer, dead, alive):
        broker.close()


def test_jobs_lost_max_lost_times_are_dead_lettered_as_a_nack_would_and_failed(
    redis_namespace: str, queue_name: str, client: redis.Redis, sqlite_url: str
) -> None:
    store.connect(sqlite_url)
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    dead = broker_named(redis_namespace, "w-poisoned")
    send(producer, queue_name, 3)
    bad, unlucky, good = fetch(dead, queue_name, 3)
    for message, lost in ((bad, 2), (unlucky, 1)):
        queued = now_ms()
        Job.insert(message_id=message.message_id, queue=queue_name, actor="a", status=JobStatus.PROCESSING,
                   worker_id="w-poisoned", queued_at=queued, queued_day=day_of(queued), progress=8 + PHASE_STARTED,
                   lost_attempts=lost, broker_message_id=redis_id(message)).execute()
    lost = mark_lost("w-poisoned", "killed by SIGKILL")

    before = int(time.time() * 1000)
    result = Rescuer(broker=producer, max_lost=3).rescue("w-poisoned", [queue_name], lost,
                                                         last_exit="killed by SIGKILL")

    assert result == PutBack(requeued=2, dead=(redis_id(bad),))
    assert sorted(ready_ids(client, redis_namespace, queue_name)) == sorted([redis_id(unlucky), redis_id(good)])
    assert client.zscore(internals.dead_key(redis_namespace, queue_name), redis_id(bad)) >= before
    body = client.hget(internals.dead_messages_key(redis_namespace, queue_name), redis_id(bad))
    assert dramatiq.Message.decode(body).message_id == bad.message_id
    assert not client.hexists(internals.messages_key(redis_namespace, queue_name), redis_id(bad))
    row = Job.get(Job.message_id == bad.message_id)
    assert (row.status, row.lost_attempts) == (JobStatus.FAILED, 3)
    assert row.exception == "given up: lost 3 times (max_lost 3), not run again; last exit: killed by SIGKILL"
    assert json.loads(row.payload)["message_id"] == bad.message_id  # from the dead letter: it can be retried
    assert Job.get(Job.message_id == unlucky.message_id).status == JobStatus.PENDING
    producer.close()
    dead.close()


def test_a_consumer_the_broker_heard_from_lately_keeps_its_messages_until_it_goes_silent(
    redis_namespace: str, queue_name: str, client: redis.Redis
) -> None:
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    other_host = broker_named(redis_namespace, "host-b-default-1-cccccc")
    send(producer, queue_name, 2)
    held = fetch(other_host, queue_name, 2)
    now = [0.0]
    rescuer = Rescuer(broker=producer, clock=lambda: now[0])
    ack_set = internals.ack_key(redis_namespace, "host-b-default-1-cccccc", queue_name)

    # Silent in the ledger for 10 s, but it fetched a moment ago: it may be running them.
    assert rescuer.rescue("host-b-default-1-cccccc", [queue_name], (), last_exit="", silence=10) == PutBack(alive=True)
    assert client.scard(ack_set) == 2 and ready_ids(client, redis_namespace, queue_name) == []
    assert rescuer.pending == ["host-b-default-1-cccccc"]
    now[0] = 5.0
    rescuer.tick()  # still heard from within 10 s
    assert client.scard(ack_set) == 2 and rescuer.pending == ["host-b-default-1-cccccc"]

    # Silent for the broker too: its last command 20 s ago.
    heartbeats = internals.heartbeats_key(redis_namespace)
    client.zadd(heartbeats, {"host-b-default-1-cccccc": int(time.time() * 1000) - 20_000})
    now[0] = 10.0
    rescuer.tick()
    assert rescuer.pending == []
    assert sorted(ready_ids(client, redis_namespace, queue_name)) == sorted(redis_id(m) for m in held)
    producer.close()
    other_host.close()


def test_messages_whose_body_is_gone_are_not_put_back(
    redis_namespace: str, queue_name: str, client: redis.Redis
) -> None:
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    dead = broker_named(redis_namespace, "w-acked")
    send(producer, queue_name, 2)
    first, second = fetch(dead, queue_name, 2)
    client.hdel(internals.messages_key(redis_namespace, queue_name), redis_id(first))  # as an ack leaves it
    assert Rescuer(broker=producer).put_back("w-acked", [queue_name]) == PutBack(requeued=1)
    assert ready_ids(client, redis_namespace, queue_name) == [redis_id(second)]
    producer.close()
    dead.close()


def test_brokers_that_redeliver_by_themselves_need_nothing() -> None:
    assert Rescuer(broker=StubBroker(middleware=[])).put_back("w", ["default"]) == PutBack()


def test_a_rescue_the_broker_cannot_take_now_is_tried_again(
    redis_namespace: str, queue_name: str, client: redis.Redis
) -> None:
    unreachable = RedisBroker(url="redis://127.0.0.1:1/0", namespace=redis_namespace, middleware=[])
    now = [0.0]
    rescuer = Rescuer(broker=unreachable, clock=lambda: now[0])
    assert rescuer.put_back("w-later", [queue_name]) is None
    assert rescuer.pending == ["w-later"]
    producer = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    dead = broker_named(redis_namespace, "w-later")
    send(producer, queue_name, 1)
    fetch(dead, queue_name, 1)
    rescuer._broker = producer  # the broker is back
    now[0] = 1.0
    rescuer.tick()  # not due yet
    assert rescuer.pending == ["w-later"]
    now[0] = 5.0
    rescuer.tick()
    assert rescuer.pending == [] and len(ready_ids(client, redis_namespace, queue_name)) == 1
    for broker in (unreachable, producer, dead):
        broker.close()


def test_a_rescuer_finds_the_broker_by_importing_the_app(monkeypatch: pytest.MonkeyPatch, redis_namespace: str) -> None:
    monkeypatch.setenv("WT_TEST_NAMESPACE", redis_namespace)
    # The app sets Dramatiq's global broker: put it back afterwards, and forget the module.
    monkeypatch.setattr(dramatiq.broker, "global_broker", dramatiq.broker.global_broker)
    monkeypatch.delitem(sys.modules, "apps.sup_app", raising=False)
    rescuer = Rescuer(app="apps.sup_app")
    rescuer.start()
    broker = rescuer.broker(wait=30)
    assert isinstance(broker, RedisBroker) and rescuer.kind == "redis"
    missing = Rescuer(app="apps.no_such_app")
    assert missing.broker(wait=30) is None
    assert missing.put_back("w", ["default"]) is None and missing.pending == []  # left to the broker
