"""The command bus: values with a TTL, atomic lists, on Redis and on every database."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.checkout import subprocess_env
from tests.support.polling import wait_until
from tests.support.servers import REDIS_URL, make_database_url, unique
from watchtower import models
from watchtower.bus import CommandBus, open_bus, supervisor_inbox_key, worker_command_key
from watchtower.bus.database import DatabaseCommandBus
from watchtower.bus.redis import RedisCommandBus
from watchtower.config import load_settings
from watchtower.errors import BusError

DRIVERS = ("redis", "sqlite", "postgresql", "mysql")


@pytest.fixture(params=DRIVERS)
def bus_spec(request: pytest.FixtureRequest, tmp_path: Path, redis_namespace: str) -> Iterator[dict[str, str]]:
    """How to open a bus of each driver: {"kind", "url", "prefix"} (a fresh database each)."""
    if request.param == "redis":
        yield {"kind": "redis", "url": REDIS_URL, "prefix": redis_namespace}
        return
    url, drop = make_database_url(request.param, tmp_path)
    try:
        yield {"kind": "database", "url": url, "prefix": ""}
    finally:
        if models.database.obj is not None:
            models.database.obj.close()
        drop()


def make_bus(spec: dict[str, str]) -> CommandBus:
    if spec["kind"] == "redis":
        return RedisCommandBus(url=spec["url"], prefix=spec["prefix"])
    return DatabaseCommandBus(database=spec["url"])


@pytest.fixture
def bus(bus_spec: dict[str, str]) -> Iterator[CommandBus]:
    bus = make_bus(bus_spec)
    yield bus
    bus.close()


def test_key_helpers_name_the_keys() -> None:
    assert worker_command_key("host-12-ab") == "worker:host-12-ab:commands"
    assert supervisor_inbox_key("emails") == "supervisor:emails:inbox"


def test_open_bus_follows_the_command_bus_setting(tmp_path: Path) -> None:
    database = load_settings(env={}, overrides={"database_url": f"sqlite:///{tmp_path / 'x.db'}"})
    assert isinstance(open_bus(database), DatabaseCommandBus)
    redis_bus = open_bus(load_settings(env={"WATCHTOWER_COMMAND_BUS": "redis", "WATCHTOWER_REDIS_PREFIX": "p1"}))
    assert isinstance(redis_bus, RedisCommandBus)
    assert redis_bus.prefix == "p1"


def test_put_get_forget(bus: CommandBus) -> None:
    key = worker_command_key(unique("w"))
    assert bus.get(key) is None
    bus.put(key, "pause")
    assert bus.get(key) == "pause"
    bus.put(key, "resume")  # a second put replaces the first
    assert bus.get(key) == "resume"
    bus.forget(key)
    assert bus.get(key) is None
    bus.forget(key)  # forgetting what is missing is fine
    bus.ping()


def test_values_expire_after_their_ttl(bus: CommandBus) -> None:
    short, long = unique("short"), unique("long")
    bus.put(long, "stop", ttl=60)
    bus.put(short, "stop", ttl=0.3)
    assert bus.get(short) == "stop"
    started = time.monotonic()
    wait_until(lambda: bus.get(short) is None, timeout=15, message="the short-lived value to expire")
    print(f"value with ttl 0.3 s gone after {time.monotonic() - started:.2f} s")
    assert bus.get(long) == "stop"


def test_a_list_is_drained_oldest_first_and_only_once(bus: CommandBus) -> None:
    key = supervisor_inbox_key(unique("sup"))
    assert bus.pop_all(key) == []
    for n in range(5):
        bus.push(key, f"start {n}")
    assert bus.pop_all(key) == [f"start {n}" for n in range(5)]
    assert bus.pop_all(key) == []
    bus.push(key, "again")
    assert bus.pop_all(key) == ["again"]
    assert bus.get(key) is None  # lists and values do not mix


def test_list_entries_expire_one_by_one(bus: CommandBus) -> None:
    key = supervisor_inbox_key(unique("sup"))
    canary = unique("canary")
    bus.push(key, "old", ttl=0.3)
    bus.put(canary, "x", ttl=0.3)  # written after the entry with the same ttl: gone no sooner
    bus.push(key, "fresh", ttl=60)
    wait_until(lambda: bus.get(canary) is None, timeout=15, message="the canary to expire")
    assert bus.pop_all(key) == ["fresh"]


def test_database_bus_purges_expired_rows(sqlite_url: str) -> None:
    bus = DatabaseCommandBus(database=sqlite_url)
    canary = unique("canary")
    bus.push("inbox", "old", ttl=0.2)
    bus.put("cmd", "old", ttl=0.2)
    bus.put(canary, "x", ttl=0.2)
    bus.put("kept", "yes", ttl=60)
    wait_until(lambda: bus.get(canary) is None, timeout=15)
    assert bus.purge_expired() == 3
    assert [row.key for row in models.Command.select()] == ["kept"]
    assert models.CommandEntry.select().count() == 0
    bus.close()


def test_a_drain_that_fails_midway_keeps_what_it_took_and_leaves_the_rest(sqlite_url: str) -> None:
    # The database refuses to delete one entry (a trigger, as a lock timeout
    # or a dropped connection would): the entries taken before it are the
    # caller's, not lost with an exception; the rest wait for the next drain.
    bus = DatabaseCommandBus(database=sqlite_url)
    key = worker_command_key(unique("w"))
    for value in ("pause", "resume", "refused", "stop"):
        bus.push(key, value)
    db = models.database.obj
    db.execute_sql(
        "CREATE TRIGGER refuse BEFORE DELETE ON watchtower_command_entries WHEN old.value = 'refused' "
        "BEGIN SELECT RAISE(ABORT, 'refused on purpose'); END"
    )
    assert bus.pop_all(key) == ["pause", "resume"]
    with pytest.raises(BusError, match="refused on purpose"):
        bus.pop_all(key)  # nothing taken yet: the failure is the caller's to see
    db.execute_sql("DROP TRIGGER refuse")
    assert bus.pop_all(key) == ["refused", "stop"]
    bus.close()


def test_pop_all_from_many_threads_takes_each_entry_once(bus_spec: dict[str, str]) -> None:
    key = supervisor_inbox_key(unique("sup"))
    pushed = [f"entry {n:04d}" for n in range(150)]
    done = threading.Event()
    taken: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def push() -> None:
        bus = make_bus(bus_spec)
        try:
            for value in pushed:
                bus.push(key, value)
        except BaseException as error:
            errors.append(error)
        finally:
            done.set()

    def drain(mine: list[str]) -> None:
        bus = make_bus(bus_spec)
        try:
            while True:
                finished = done.is_set()  # read before the drain: nothing pushed after is missed
                mine.extend(bus.pop_all(key))
                if finished:
                    return
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=drain, args=(mine,)) for mine in taken]
    threads.append(threading.Thread(target=push))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    everything = [value for mine in taken for value in mine]
    assert sorted(everything) == pushed  # none twice, none lost
    for mine in taken:
        assert mine == sorted(mine)  # each drain hands entries oldest first
    print("entries taken per thread:", [len(mine) for mine in taken])


_DRAIN_SCRIPT = """
import json, sys, time
from watchtower.bus.database import DatabaseCommandBus
from watchtower.bus.redis import RedisCommandBus
kind, url, prefix, key, stop_key, ready_key = sys.argv[1:]
bus = RedisCommandBus(url=url, prefix=prefix) if kind == "redis" else DatabaseCommandBus(database=url)
taken = bus.pop_all(key)
bus.push(ready_key, "ready")
while True:
    finished = bus.get(stop_key) is not None
    taken.extend(bus.pop_all(key))
    if finished:
        break
print(json.dumps(taken))
"""


def test_pop_all_from_many_processes_takes_each_entry_once(bus_spec: dict[str, str]) -> None:
    key = supervisor_inbox_key(unique("sup"))
    stop_key, ready_key = unique("stop"), unique("ready")
    bus = make_bus(bus_spec)
    bus.ping()  # creates the tables before the children race for them
    pushed = [f"entry {n:04d}" for n in range(100)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _DRAIN_SCRIPT, bus_spec["kind"], bus_spec["url"], bus_spec["prefix"], key, stop_key,
             ready_key],
            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    try:
        ready: list[str] = []
        wait_until(lambda: ready.extend(bus.pop_all(ready_key)) or len(ready) == 3, timeout=60,
                   message="the draining processes to start")
        for value in pushed:
            bus.push(key, value)
        bus.put(stop_key, "done")
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        bus.close()
    for child, (_, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    taken = [json.loads(out) for out, _ in outputs]
    everything = [value for mine in taken for value in mine]
    assert sorted(everything) == pushed
    for mine in taken:
        assert mine == sorted(mine)
    print("entries taken per process:", [len(mine) for mine in taken])


def test_an_unreachable_redis_is_one_clear_line() -> None:
    bus = RedisCommandBus(url="redis://127.0.0.1:1/0", prefix="x")
    for call in (bus.ping, lambda: bus.get("k"), lambda: bus.put("k", "v"), lambda: bus.pop_all("k")):
        with pytest.raises(BusError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message
        assert "Redis command bus at redis://127.0.0.1:1/0 cannot be reached" in message


def test_an_unreachable_database_is_one_clear_line() -> None:
    bus = DatabaseCommandBus(database="postgresql://postgres:secret@127.0.0.1:1/nothing")
    with pytest.raises(BusError) as caught:
        bus.ping()
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message
    assert "database command bus" in message


def test_ttl_must_be_positive(sqlite_url: str) -> None:
    for bus in (DatabaseCommandBus(database=sqlite_url), RedisCommandBus(url=REDIS_URL, prefix=unique("p"))):
        with pytest.raises(ValueError, match="ttl"):
            bus.put("k", "v", ttl=0)
        with pytest.raises(ValueError, match="ttl"):
            bus.push("k", "v", ttl=-1)
