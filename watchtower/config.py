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

Supervisors are declared only in the file, one table each::

    [supervisors.default]
    queues = ["default", "emails"]
    min_processes = 2
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

__all__ = ["Settings", "SupervisorSettings", "load_settings", "KEYS"]

COMMAND_BUSES = ("database", "redis")


@dataclass(frozen=True)
class SupervisorSettings:
    """One pool of worker processes, as declared in ``[supervisors.NAME]``."""

    name: str = "default"
    queues: tuple[str, ...] = ("default",)
    min_processes: int = 1
    max_processes: int = 4
    threads: int = 8
    tries: int = 3
    timeout: float = 60.0
    memory: int = 128
    sleep: float = 3.0
    rest: float = 0.0


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
}

SUPERVISOR_KEYS: dict[str, type] = {
    "queues": list,
    "min_processes": int,
    "max_processes": int,
    "threads": int,
    "tries": int,
    "timeout": float,
    "memory": int,
    "sleep": float,
    "rest": float,
}

# Keys that must be at least 1, and keys that must not be negative.
_POSITIVE = {"recorder.buffer_size", "recorder.batch_size", "threads", "max_processes", "tries"}
# Intervals that must be above zero: a flush or heartbeat every 0 s is a busy loop.
_ABOVE_ZERO = {"recorder.flush_interval", "retention.interval", "heartbeat_interval", "heartbeat_timeout"}
_NON_NEGATIVE = {
    "recorder.flush_interval", "retention.completed_days", "retention.failed_days",
    "retention.skipped_days", "retention.rollup_days", "retention.workers_days",
    "retention.interval", "http.port", "heartbeat_interval",
    "min_processes", "timeout", "memory", "sleep", "rest",
}


def env_name(key: str) -> str:
    """The environment variable that sets dotted ``key``."""
    if key == "http.token":
        return "WATCHTOWER_API_TOKEN"
    return "WATCHTOWER_" + key.replace(".", "_").upper()


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
    supervisors: dict[str, SupervisorSettings] | None = None

    file_data, file_label = _read_file(path, env, workdir)
    if file_data:
        supervisors_table = file_data.pop("supervisors", None)
        for key, value in _flatten(file_data):
            _set(values, sources, key, value, file_label, from_text=False)
        if supervisors_table is not None:
            supervisors = _supervisors(supervisors_table, file_label)

    for name, text in env.items():
        if not name.startswith("WATCHTOWER_") or name in _ENV_OTHER:
            continue
        env_key = _ENV_TO_KEY.get(name)
        if env_key is None:
            known = ", ".join(sorted(_ENV_TO_KEY))
            raise ConfigError(
                f"unknown environment variable {name}: Watchtower reads {known} and WATCHTOWER_CONFIG"
            )
        _set(values, sources, env_key, text, f"environment variable {name}", from_text=True)

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        _set(values, sources, key, value, f"command line option --{key.replace('_', '-')}", from_text=False)

    if supervisors is not None:
        values["supervisors"] = supervisors
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


def _set(values: dict[str, Any], sources: dict[str, str], key: str, value: Any, source: str, *, from_text: bool) -> None:
    if key not in KEYS:
        known = ", ".join(sorted(KEYS))
        raise ConfigError(f"unknown setting {key!r} in {source}: the known settings are {known}, and [supervisors.NAME]")
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


def _supervisors(table: Any, source: str) -> dict[str, SupervisorSettings]:
    if not isinstance(table, dict):
        raise ConfigError(f"[supervisors] in {source} must be a table of [supervisors.NAME] tables")
    result: dict[str, SupervisorSettings] = {}
    for name, body in table.items():
        if not isinstance(body, dict):
            raise ConfigError(f"[supervisors.{name}] in {source} must be a table")
        fields: dict[str, Any] = {"name": name}
        for key, value in body.items():
            if key not in SUPERVISOR_KEYS:
                known = ", ".join(SUPERVISOR_KEYS)
                raise ConfigError(
                    f"unknown setting {key!r} in [supervisors.{name}] of {source}: the known ones are {known}"
                )
            fields[key] = _coerce(f"supervisors.{name}.{key}", value, SUPERVISOR_KEYS[key], source, from_text=False)
        supervisor = SupervisorSettings(**fields)
        if supervisor.min_processes > supervisor.max_processes:
            raise ConfigError(
                f"[supervisors.{name}] in {source}: min_processes ({supervisor.min_processes}) "
                f"is larger than max_processes ({supervisor.max_processes})"
            )
        if not supervisor.queues:
            raise ConfigError(f"[supervisors.{name}] in {source}: queues must name at least one queue")
        result[name] = supervisor
    return result


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
    if grafana is not None and (not grafana.startswith(("http://", "https://")) or len(grafana.split("://", 1)[1]) == 0):
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


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some attributes changed (for tests and the CLI)."""
    return dataclasses.replace(settings, **changes)
