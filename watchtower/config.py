"""Settings: defaults < config file < ``WATCHTOWER_*`` environment < command line.

One spelling per key.  A key is written dotted (``retention.completed_days``);
in a TOML file it is a table path (``[retention] completed_days = 3``), in
the environment it is ``WATCHTOWER_`` followed by the key upper-cased with dots
as underscores (``WATCHTOWER_RETENTION_COMPLETED_DAYS``), and on the command
line it is the same key as a flag (``--database-url``).  The one exception,
fixed by the design, is the API token: ``http.token`` is read from
``WATCHTOWER_API_TOKEN``.

The file is, in order of preference: the path given to :func:`load_settings`,
the file named by ``WATCHTOWER_CONFIG``, ``watchtower.toml`` in the working
directory, or the ``[tool.watchtower]`` table of ``pyproject.toml`` there.

Supervisors (pools of worker processes) are tables of the file, one each::

    [supervisors.default]
    queues = ["default", "emails"]
    min_processes = 2

and their keys follow the same rule: ``supervisors.default.min_processes``
is ``WATCHTOWER_SUPERVISORS_DEFAULT_MIN_PROCESSES`` in the environment (the
pool's name upper-cased, any character other than a letter or a digit as
``_``) and ``--min-processes`` on ``watchtower supervise``.  A pool named in
the environment or on the command line but not in the file is made from
the defaults and those values.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import MEMORY, REST, SLEEP, THREADS, TIMEOUT, TRIES, WORKER_OPTIONS

__all__ = ["Settings", "SupervisorSettings", "load_settings", "KEYS", "SUPERVISOR_KEYS", "pool_key", "env_name",
           "value_of", "as_text"]

COMMAND_BUSES = ("database", "redis")


@dataclass(frozen=True)
class SupervisorSettings:
    """One pool of worker processes, as declared in ``[supervisors.NAME]``.

    The limits its workers run with are the worker options of
    :mod:`watchtower.options`, with their defaults and ranges.
    """

    name: str = "default"
    queues: tuple[str, ...] = ("default",)
    min_processes: int = 1
    max_processes: int = 4
    threads: int = THREADS.default
    tries: int = TRIES.default
    timeout: float = TIMEOUT.default
    memory: int = MEMORY.default
    sleep: float = SLEEP.default
    rest: float = REST.default


@dataclass(frozen=True)
class Settings:
    """Every setting Watchtower reads, with its default.

    Durations are in seconds, memory in megabytes, retention in days.
    ``sources`` tells, for each key that was not left at its default, where
    its value came from (used in error messages and ``watchtower config``).
    """

    app: str | None = None
    database_url: str = "sqlite:///watchtower.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Keys of the Redis command bus are "<redis_prefix>:<key>", so that
    # several installations can share one Redis.
    redis_prefix: str = "watchtower"
    command_bus: str = "database"
    # The name this host's workers and supervisors record (tests fake hosts
    # with it); read when the settings are built, never at import.
    hostname: str = field(default_factory=socket.gethostname)
    # The recorder's buffer: how often it writes, how many events it keeps
    # while the database is away, and how many go in one transaction.
    recorder_flush_interval: float = 0.25
    recorder_buffer_size: int = 100_000
    recorder_batch_size: int = 1_000
    # How much lower than the jobs' threads the flusher thread runs (Linux
    # niceness added to its own thread; 0 leaves it as it is).
    recorder_nice: int = 10
    # Where events past the buffer wait on local disk while the database is
    # away (None: a directory of this user's under the system's temporary
    # directory, see watchtower.spool), and how large one process's spool
    # file may grow, in bytes (0: no spool; events past the buffer are dropped).
    recorder_spool_dir: str | None = None
    recorder_spool_bytes: int = 256 * 1024 * 1024
    # Seconds, from the moment a worker process starts to stop, within which
    # the recorder writes what it holds; what is still unwritten then goes to
    # the spool, so that a stop fits in `docker stop`'s 10 s.
    recorder_shutdown_timeout: float = 8.0
    retention_completed_days: float = 7.0
    retention_failed_days: float = 30.0
    # Skipped jobs (AgeLimit) are dead-lettered by Dramatiq: kept as long as failures.
    retention_skipped_days: float = 30.0
    # Per-minute rollups: MetricsCollector reads the last 24 hours.
    retention_rollup_days: float = 2.0
    # Stopped and lost worker rows: as long as completed jobs, which name them.
    retention_workers_days: float = 7.0
    retention_auto: bool = False
    retention_interval: float = 3600.0
    http_host: str = "127.0.0.1"
    # 9192, not 9191: Dramatiq's own Prometheus exporter (dramatiq_prom_port)
    # listens on 9191 on every address, and both often run on one host.
    http_port: int = 9192
    http_prefix: str = "/watchtower"
    http_token: str | None = None
    # Reverse proxies (addresses or networks) whose forwarding headers name
    # the client, for the token-less loopback-only mode.
    http_trusted_proxies: tuple[str, ...] = ()
    metrics_dir: str | None = None
    # Where the Grafana that shows the shipped dashboards answers
    # (http://grafana:3000); the console links to them when it is set.
    grafana_url: str | None = None
    redact: tuple[str, ...] = ("password", "passwd", "token", "secret", "authorization", "api_key", "apikey")
    heartbeat_interval: float = 1.0
    # A worker whose heartbeat is older than this is hung (its supervisor
    # kills and replaces it) or, when nobody supervises it any more, stale
    # (any supervisor marks its record lost).
    heartbeat_timeout: float = 60.0
    # A job whose worker died under it this many times is not run again: it
    # is dead-lettered and recorded failed (a poison job, say one that the
    # kernel's OOM killer ends every time).
    max_lost: int = 3

    # A pending or processing job with no news for this long is marked
    # unknown by the supervisors (see watchtower.stuck); 0: never.
    unknown_after: float = 86400.0
    supervisors: Mapping[str, SupervisorSettings] = field(
        default_factory=lambda: {"default": SupervisorSettings()}
    )
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def supervisor(self, name: str) -> SupervisorSettings:
        """The supervisor called ``name``, or a ConfigError listing the known ones."""
        try:
            return self.supervisors[name]
        except KeyError:
            known = ", ".join(sorted(self.supervisors)) or "none"
            raise ConfigError(
                f"unknown supervisor {name!r}: the configuration declares {known}"
            ) from None


# Dotted key -> (attribute, type).  The type drives parsing from the
# environment and checking of file values.
KEYS: dict[str, tuple[str, type]] = {
    "app": ("app", str),
    "database_url": ("database_url", str),
    "redis_url": ("redis_url", str),
    "redis_prefix": ("redis_prefix", str),
    "command_bus": ("command_bus", str),
    "hostname": ("hostname", str),
    "recorder.flush_interval": ("recorder_flush_interval", float),
    "recorder.buffer_size": ("recorder_buffer_size", int),
    "recorder.batch_size": ("recorder_batch_size", int),
    "recorder.nice": ("recorder_nice", int),
    "recorder.spool_dir": ("recorder_spool_dir", str),
    "recorder.spool_bytes": ("recorder_spool_bytes", int),
    "recorder.shutdown_timeout": ("recorder_shutdown_timeout", float),
    "retention.completed_days": ("retention_completed_days", float),
    "retention.failed_days": ("retention_failed_days", float),
    "retention.skipped_days": ("retention_skipped_days", float),
    "retention.rollup_days": ("retention_rollup_days", float),
    "retention.workers_days": ("retention_workers_days", float),
    "retention.auto": ("retention_auto", bool),
    "retention.interval": ("retention_interval", float),
    "http.host": ("http_host", str),
    "http.port": ("http_port", int),
    "http.prefix": ("http_prefix", str),
    "http.token": ("http_token", str),
    "http.trusted_proxies": ("http_trusted_proxies", list),
    "metrics_dir": ("metrics_dir", str),
    "grafana_url": ("grafana_url", str),
    "redact": ("redact", list),
    "heartbeat_interval": ("heartbeat_interval", float),
    "heartbeat_timeout": ("heartbeat_timeout", float),
    "max_lost": ("max_lost", int),
    "unknown_after": ("unknown_after", float),
}

SUPERVISOR_KEYS: dict[str, type] = {
    "queues": list,
    "min_processes": int,
    "max_processes": int,
    **{name: option.kind for name, option in WORKER_OPTIONS.items()},
}

# Keys that must be at least 1, and keys that must not be negative (a pool's
# worker options have the ranges of their own table, watchtower.options).
_POSITIVE = {"recorder.buffer_size", "recorder.batch_size", "max_processes", "max_lost"}
# Intervals that must be above zero: a flush or heartbeat every 0 s is a busy loop.
_ABOVE_ZERO = {"recorder.flush_interval", "retention.interval", "heartbeat_interval", "heartbeat_timeout"}
_NON_NEGATIVE = {
    "recorder.flush_interval", "recorder.spool_bytes", "recorder.shutdown_timeout",
    "retention.completed_days", "retention.failed_days",
    "retention.skipped_days", "retention.rollup_days", "retention.workers_days",
    "retention.interval", "http.port", "heartbeat_interval", "unknown_after",
    "min_processes",
}


_POOL_ENV_PREFIX = "WATCHTOWER_SUPERVISORS_"


def pool_key(name: str, setting: str) -> str:
    """The dotted key of a pool's setting: ``supervisors.NAME.SETTING``."""
    return f"supervisors.{name}.{setting}"


def _split_pool_key(key: str) -> tuple[str, str] | None:
    """``(name, field)`` of a ``supervisors.NAME.FIELD`` key, or None for any other key."""
    if not key.startswith("supervisors."):
        return None
    name, _, setting = key[len("supervisors."):].rpartition(".")
    return (name, setting) if name else None


def _env_part(name: str) -> str:
    """A pool's name as its environment variables spell it."""
    return "".join(c if c.isalnum() else "_" for c in name).upper()


def env_name(key: str) -> str:
    """The environment variable that sets dotted ``key`` (a pool's keys too)."""
    if key == "http.token":
        return "WATCHTOWER_API_TOKEN"
    pool = _split_pool_key(key)
    if pool is not None:
        return f"{_POOL_ENV_PREFIX}{_env_part(pool[0])}_{pool[1].upper()}"
    return "WATCHTOWER_" + key.replace(".", "_").upper()


def _pool_from_env(variable: str, declared: Mapping[str, Any]) -> tuple[str, str]:
    """The pool and key a ``WATCHTOWER_SUPERVISORS_<NAME>_<KEY>`` variable sets.

    The name is the declared pool's whose spelling matches, else the
    variable's part lower-cased.  No key is a suffix of another, so the
    split is never ambiguous.
    """
    rest = variable[len(_POOL_ENV_PREFIX):]
    for setting in SUPERVISOR_KEYS:
        suffix = "_" + setting.upper()
        if rest.endswith(suffix) and len(rest) > len(suffix):
            part = rest[: -len(suffix)]
            for name in declared:
                if _env_part(name) == part:
                    return name, setting
            return part.lower(), setting
    known = ", ".join(key.upper() for key in SUPERVISOR_KEYS)
    raise ConfigError(
        f"unknown environment variable {variable}: a pool's variables are "
        f"{_POOL_ENV_PREFIX}<NAME>_<KEY> with KEY one of {known}"
    )


_ENV_TO_KEY = {env_name(key): key for key in KEYS}
_ENV_OTHER = {"WATCHTOWER_CONFIG"}


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Settings:
    """Load the settings: defaults, then the file, the environment, ``overrides``.

    ``overrides`` maps dotted keys to values (the command line's flags); a
    value of ``None`` there means "not given" and is ignored.
    """
    env = os.environ if env is None else env
    workdir = Path(cwd) if cwd is not None else Path.cwd()
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    # Pool name -> its keys' values, layered like every other key.
    pools: dict[str, dict[str, Any]] = {}

    file_data, file_label = _read_file(path, env, workdir)
    supervisors_table = file_data.pop("supervisors", None) if file_data else None
    for key, value in _flatten(file_data):
        _set(values, sources, key, value, file_label, from_text=False)
    if supervisors_table is not None:
        _file_pools(pools, sources, supervisors_table, file_label)
    else:
        pools["default"] = {}

    for name, text in sorted(env.items()):
        if not name.startswith("WATCHTOWER_") or name in _ENV_OTHER:
            continue
        source = f"environment variable {name}"
        if name.startswith(_POOL_ENV_PREFIX):
            pool, field = _pool_from_env(name, pools)
            _set_pool(pools, sources, pool, field, text, source, from_text=True)
            continue
        env_key = _ENV_TO_KEY.get(name)
        if env_key is None:
            known = ", ".join(sorted(_ENV_TO_KEY))
            raise ConfigError(
                f"unknown environment variable {name}: Watchtower reads {known}, "
                f"{_POOL_ENV_PREFIX}<NAME>_<KEY> and WATCHTOWER_CONFIG"
            )
        _set(values, sources, env_key, text, source, from_text=True)

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        pool_field = _split_pool_key(key)
        if pool_field is not None:
            source = f"command line option --{pool_field[1].replace('_', '-')}"
            _set_pool(pools, sources, *pool_field, value, source, from_text=False)
            continue
        _set(values, sources, key, value, f"command line option --{key.replace('_', '-')}", from_text=False)

    values["supervisors"] = {name: _build_pool(name, fields, sources) for name, fields in pools.items()}
    settings = Settings(**values, sources=sources)
    _check(settings)
    return settings


def _read_file(
    path: str | os.PathLike[str] | None, env: Mapping[str, str], workdir: Path
) -> tuple[dict[str, Any], str]:
    if path is None and env.get("WATCHTOWER_CONFIG"):
        path = env["WATCHTOWER_CONFIG"]
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"configuration file {str(file)!r} does not exist")
        data = _parse_toml(file)
        if file.name == "pyproject.toml":
            return dict(data.get("tool", {}).get("watchtower", {})), f"{file} [tool.watchtower]"
        return data, str(file)
    own = workdir / "watchtower.toml"
    if own.is_file():
        return _parse_toml(own), str(own)
    pyproject = workdir / "pyproject.toml"
    if pyproject.is_file():
        table = _parse_toml(pyproject).get("tool", {}).get("watchtower")
        if table is not None:
            return dict(table), f"{pyproject} [tool.watchtower]"
    return {}, ""


def _parse_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {str(file)!r} is not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"configuration file {str(file)!r} cannot be read: {error}") from None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in KEYS:
            items.extend(_flatten(value, key + "."))
        else:
            items.append((key, value))
    return items


def _set(
    values: dict[str, Any], sources: dict[str, str], key: str, value: Any, source: str, *, from_text: bool
) -> None:
    if key not in KEYS:
        known = ", ".join(sorted(KEYS))
        raise ConfigError(
            f"unknown setting {key!r} in {source}: the known settings are {known}, and [supervisors.NAME]"
        )
    attribute, kind = KEYS[key]
    values[attribute] = _coerce(key, value, kind, source, from_text=from_text)
    sources[key] = source


def _coerce(key: str, value: Any, kind: type, source: str, *, from_text: bool) -> Any:
    """Check (file, command line) or parse (environment) one value."""
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"setting {key!r} from {source} must be {expected}, not {value!r}")

    if kind is bool:
        if from_text:
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise wrong("true or false")
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind is int:
        if from_text:
            try:
                value = int(str(value).strip())
            except ValueError:
                raise wrong("a whole number") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
        _check_range(key, value, source)
        return value
    if kind is float:
        if from_text:
            try:
                value = float(str(value).strip())
            except ValueError:
                raise wrong("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise wrong("a finite number")
        _check_range(key, value, source)
        return float(value)
    if kind is list:
        if from_text:
            return tuple(part.strip() for part in str(value).split(",") if part.strip())
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise wrong("a list of names")
        return tuple(value)
    if not isinstance(value, str):
        raise wrong("a string")
    return value


def _check_range(key: str, value: float, source: str) -> None:
    short = key.rsplit(".", 1)[-1]
    pool = _split_pool_key(key)
    option = WORKER_OPTIONS.get(pool[1]) if pool else None
    if option is not None and not option.smallest <= value <= option.largest:
        raise ConfigError(f"setting {key!r} from {source} must be {option.bounds}, not {value!r}")
    if (key in _POSITIVE or short in _POSITIVE) and value < 1:
        raise ConfigError(f"setting {key!r} from {source} must be at least 1, not {value!r}")
    if (key in _NON_NEGATIVE or short in _NON_NEGATIVE) and value < 0:
        raise ConfigError(f"setting {key!r} from {source} must not be negative, not {value!r}")
    if key in _ABOVE_ZERO and value <= 0:
        raise ConfigError(f"setting {key!r} from {source} must be greater than 0, not {value!r}")
    if key == "recorder.nice" and not 0 <= value <= 19:
        raise ConfigError(f"setting {key!r} from {source} must be a niceness from 0 to 19, not {value!r}")
    if key == "http.port" and value > 65535:
        raise ConfigError(f"setting {key!r} from {source} must be a TCP port (0 to 65535), not {value!r}")


def _file_pools(pools: dict[str, dict[str, Any]], sources: dict[str, str], table: Any, source: str) -> None:
    """The file's ``[supervisors.NAME]`` tables, checked key by key."""
    if not isinstance(table, dict):
        raise ConfigError(f"[supervisors] in {source} must be a table of [supervisors.NAME] tables")
    for name, body in table.items():
        if not isinstance(body, dict):
            raise ConfigError(f"[supervisors.{name}] in {source} must be a table")
        pools[name] = {}
        for key, value in body.items():
            if key not in SUPERVISOR_KEYS:
                known = ", ".join(SUPERVISOR_KEYS)
                raise ConfigError(
                    f"unknown setting {key!r} in [supervisors.{name}] of {source}: the known ones are {known}"
                )
            _set_pool(pools, sources, name, key, value, source, from_text=False)


def _set_pool(
    pools: dict[str, dict[str, Any]], sources: dict[str, str], name: str, setting: str, value: Any, source: str,
    *, from_text: bool,
) -> None:
    key = pool_key(name, setting)
    if setting not in SUPERVISOR_KEYS:
        known = ", ".join(SUPERVISOR_KEYS)
        raise ConfigError(f"unknown setting {key!r} in {source}: a pool's settings are {known}")
    if not name.strip():
        raise ConfigError(f"setting {key!r} from {source} must name its pool (supervisors.NAME.{setting})")
    pools.setdefault(name, {})[setting] = _coerce(key, value, SUPERVISOR_KEYS[setting], source, from_text=from_text)
    sources[key] = source


def _build_pool(name: str, fields: Mapping[str, Any], sources: Mapping[str, str]) -> SupervisorSettings:
    """One pool from its layered values, with the checks that span two keys."""
    supervisor = SupervisorSettings(name=name, **fields)

    def where(setting: str) -> str:
        return sources.get(pool_key(name, setting), "the defaults")

    if supervisor.min_processes > supervisor.max_processes:
        raise ConfigError(
            f"[supervisors.{name}]: min_processes ({supervisor.min_processes}) from {where('min_processes')} "
            f"is larger than max_processes ({supervisor.max_processes}) from {where('max_processes')}"
        )
    if not supervisor.queues:
        raise ConfigError(f"[supervisors.{name}] from {where('queues')}: queues must name at least one queue")
    return supervisor


def _check(settings: Settings) -> None:
    """Cross-field checks, once every source has been applied."""
    source = settings.sources.get("command_bus", "the defaults")
    if settings.command_bus not in COMMAND_BUSES:
        raise ConfigError(
            f"setting 'command_bus' from {source} must be one of {', '.join(COMMAND_BUSES)}, "
            f"not {settings.command_bus!r}"
        )
    from .store import check_database_url  # the store owns the table of schemes

    check_database_url(settings.database_url, source=settings.sources.get("database_url", "the defaults"))
    if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"setting 'redis_url' from {settings.sources.get('redis_url', 'the defaults')} must look like "
            f"redis://HOST:PORT/DB, not {settings.redis_url!r}"
        )
    for key, value in (("redis_prefix", settings.redis_prefix), ("hostname", settings.hostname)):
        if not value.strip():
            raise ConfigError(
                f"setting {key!r} from {settings.sources.get(key, 'the defaults')} must not be empty"
            )
    if settings.heartbeat_timeout <= settings.heartbeat_interval:
        raise ConfigError(
            f"setting 'heartbeat_timeout' from {settings.sources.get('heartbeat_timeout', 'the defaults')} "
            f"({settings.heartbeat_timeout:g} s) must be longer than 'heartbeat_interval' "
            f"({settings.heartbeat_interval:g} s)"
        )
    for proxy in settings.http_trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"setting 'http.trusted_proxies' from {settings.sources.get('http.trusted_proxies', 'the defaults')} "
                f"must list IP addresses or networks (127.0.0.1, 10.0.0.0/8), not {proxy!r}"
            ) from None
    grafana = settings.grafana_url
    if grafana is not None and (
        not grafana.startswith(("http://", "https://")) or len(grafana.split("://", 1)[1]) == 0
    ):
        raise ConfigError(
            f"setting 'grafana_url' from {settings.sources.get('grafana_url', 'the defaults')} must be the address "
            f"of a Grafana such as http://grafana.example:3000, not {grafana!r}"
        )
    prefix = settings.http_prefix
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ConfigError(
            f"setting 'http.prefix' from {settings.sources.get('http.prefix', 'the defaults')} must start "
            f"with '/' and not end with one (or be empty), not {prefix!r}"
        )


def value_of(settings: Settings, key: str) -> Any:
    """The value of dotted ``key`` (a pool's ``supervisors.NAME.FIELD`` too) in ``settings``."""
    pool = _split_pool_key(key)
    if pool is not None:
        return getattr(settings.supervisor(pool[0]), pool[1])
    return getattr(settings, KEYS[key][0])


def as_text(value: Any) -> str:
    """A value as an environment variable spells it (lists comma-separated, booleans true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(value)
    return str(value)


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some attributes changed (for tests and the CLI)."""
    return dataclasses.replace(settings, **changes)
