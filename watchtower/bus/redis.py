"""The Redis command bus: keys ``<prefix>:<key>`` on one Redis server.

A value is a plain string key with an expiry (``SET ... EX``).  A list is a
Redis list whose entries carry their own expiry, written ``<expires_ms>|<value>``
with the server's clock; pushing and draining are Lua scripts, so a drain
(read everything, delete the key) is one atomic step and two supervisors
never both take an entry.  The list key itself expires with its longest-lived
entry, so an abandoned inbox does not stay behind.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from ..errors import BusError
from ..store import redact_url
from . import DEFAULT_TTL

__all__ = ["RedisCommandBus"]

logger = logging.getLogger(__name__)

#: Seconds to wait for Redis to accept a connection or answer a command.
REDIS_TIMEOUT = 5.0

# KEYS[1] list; ARGV[1] value, ARGV[2] ttl in ms.  Expiry by the server's
# clock, so that hosts with skewed clocks agree.
_PUSH = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('RPUSH', KEYS[1], (now_ms + ttl) .. '|' .. ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""

# KEYS[1] list.  Returns the live entries (expiry stripped), oldest first,
# and deletes the list: one atomic step.
_POP_ALL = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
local live = {}
for _, item in ipairs(items) do
  local bar = string.find(item, '|', 1, true)
  if bar and tonumber(string.sub(item, 1, bar - 1)) > now_ms then
    table.insert(live, string.sub(item, bar + 1))
  end
end
return live
"""


class RedisCommandBus:
    """The command bus on Redis.

    ``url`` is a ``redis://`` URL; every key is stored as ``<prefix>:<key>``.
    Constructing it opens no connection.
    """

    def __init__(self, *, url: str, prefix: str = "watchtower") -> None:
        self.url = url
        self.prefix = prefix
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._push: Any = None
        self._pop_all: Any = None

    def __repr__(self) -> str:
        return f"RedisCommandBus(url={redact_url(self.url)!r}, prefix={self.prefix!r})"

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                try:
                    client = redis.Redis.from_url(
                        self.url,
                        decode_responses=True,
                        socket_connect_timeout=REDIS_TIMEOUT,
                        socket_timeout=REDIS_TIMEOUT,
                        health_check_interval=30,
                    )
                except ValueError as error:
                    raise BusError(f"redis_url {redact_url(self.url)!r} is not usable: {error}") from None
                self._push = client.register_script(_PUSH)
                self._pop_all = client.register_script(_POP_ALL)
                self._client = client
            return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def _fail(self, error: redis.RedisError) -> BusError:
        reason = " ".join(str(error).split()) or type(error).__name__
        return BusError(f"the Redis command bus at {redact_url(self.url)} cannot be reached: {reason}")

    def put(self, key: str, value: str, ttl: float = DEFAULT_TTL) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds."""
        try:
            self._redis().set(self._key(key), value, px=_ttl_ms(ttl))
        except redis.RedisError as error:
            raise self._fail(error) from None

    def get(self, key: str) -> str | None:
        """The value of ``key``, or None if it is missing or expired."""
        try:
            value = self._redis().get(self._key(key))
        except redis.RedisError as error:
            raise self._fail(error) from None
        return None if value is None else str(value)

    def forget(self, key: str) -> None:
        """Delete ``key``."""
        try:
            self._redis().delete(self._key(key))
        except redis.RedisError as error:
            raise self._fail(error) from None

    def push(self, key: str, value: str, ttl: float = DEFAULT_TTL) -> None:
        """Append ``value`` to the list at ``key``, to live ``ttl`` seconds."""
        client = self._redis()
        try:
            self._push(keys=[self._key(key)], args=[value, _ttl_ms(ttl)], client=client)
        except redis.RedisError as error:
            raise self._fail(error) from None

    def pop_all(self, key: str) -> list[str]:
        """Take every live entry of the list at ``key``, oldest first (atomic)."""
        client = self._redis()
        try:
            items = self._pop_all(keys=[self._key(key)], client=client)
        except redis.RedisError as error:
            raise self._fail(error) from None
        return [str(item) for item in items]

    def ping(self) -> None:
        """Raise BusError unless Redis answers."""
        try:
            self._redis().ping()
        except redis.RedisError as error:
            raise self._fail(error) from None

    def close(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _ttl_ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return max(1, int(ttl * 1000))
