"""Settings: defaults < file < environment < command line, and clear errors.

Each test writes its own files into its own directory and passes its own
environment, so nothing depends on the machine's WATCHTOWER_* variables.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from watchtower import ConfigError, Settings, load_settings
from watchtower.config import KEYS, SupervisorSettings, env_name
from watchtower.errors import DatabaseURLError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_configured(tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings == Settings(hostname=settings.hostname)
    assert settings.database_url == "sqlite:///watchtower.db"
    assert settings.command_bus == "database"
    assert (settings.retention_completed_days, settings.retention_failed_days) == (7.0, 30.0)
    assert (settings.http_host, settings.http_port, settings.http_prefix) == ("127.0.0.1", 9192, "/watchtower")
    assert settings.http_token is None
    assert settings.max_lost == 3
    assert settings.supervisor("default") == SupervisorSettings()
    assert dict(settings.sources) == {}


def test_watchtower_toml_overrides_defaults(tmp_path: Path) -> None:
    write(tmp_path / "watchtower.toml", """
app = "myapp.tasks"
database_url = "postgresql://wt@db.example:5432/ledger"

[retention]
completed_days = 3
failed_days = 60.5

[http]
port = 9300

[supervisors.emails]
queues = ["emails", "default"]
min_processes = 2
max_processes = 6
timeout = 30
""")
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.app == "myapp.tasks"
    assert settings.database_url == "postgresql://wt@db.example:5432/ledger"
    assert settings.retention_completed_days == 3.0 and isinstance(settings.retention_completed_days, float)
    assert settings.retention_failed_days == 60.5
    assert settings.http_port == 9300
    assert settings.http_host == "127.0.0.1"  # untouched keys keep their defaults
    emails = settings.supervisor("emails")
    assert emails.queues == ("emails", "default")
    assert (emails.min_processes, emails.max_processes, emails.timeout) == (2, 6, 30.0)
    assert emails.threads == SupervisorSettings().threads
    assert settings.sources["http.port"] == str(tmp_path / "watchtower.toml")
    with pytest.raises(ConfigError, match=r"unknown supervisor 'default'.*emails"):
        settings.supervisor("default")


def test_pyproject_tool_table_is_read_when_there_is_no_watchtower_toml(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", """
[project]
name = "someone-elses"

[tool.watchtower]
command_bus = "redis"

[tool.watchtower.http]
prefix = "/ops"
""")
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.command_bus == "redis"
    assert settings.http_prefix == "/ops"
    assert "[tool.watchtower]" in settings.sources["command_bus"]

    # watchtower.toml wins over pyproject.toml when both are there.
    write(tmp_path / "watchtower.toml", 'command_bus = "database"\n')
    assert load_settings(env={}, cwd=tmp_path).command_bus == "database"


def test_pyproject_without_a_tool_table_is_ignored(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n[tool.other]\nport = 1\n')
    assert load_settings(env={}, cwd=tmp_path).sources == {}


def test_watchtower_config_names_the_file(tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    config = write(elsewhere / "ops.toml", 'redis_url = "redis://cache:6380/2"\n')
    write(tmp_path / "watchtower.toml", 'redis_url = "redis://ignored:6379/0"\n')
    settings = load_settings(env={"WATCHTOWER_CONFIG": str(config)}, cwd=tmp_path)
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.sources["redis_url"] == str(config)
    # A pyproject.toml named there is read by its [tool.watchtower] table.
    pyproject = write(elsewhere / "pyproject.toml", '[tool.watchtower]\nredis_url = "redis://py:6379/3"\n')
    assert load_settings(env={"WATCHTOWER_CONFIG": str(pyproject)}, cwd=tmp_path).redis_url == "redis://py:6379/3"
    # An explicit path (the --config flag) wins over WATCHTOWER_CONFIG.
    flag = write(tmp_path / "flag.toml", 'redis_url = "redis://flag:6379/4"\n')
    assert load_settings(flag, env={"WATCHTOWER_CONFIG": str(config)}, cwd=tmp_path).redis_url == "redis://flag:6379/4"


def test_environment_overrides_the_file_and_flags_override_the_environment(tmp_path: Path) -> None:
    write(tmp_path / "watchtower.toml", """
database_url = "sqlite:///from-file.db"
[http]
port = 9300
host = "127.0.0.2"
[retention]
auto = false
""")
    env = {
        "WATCHTOWER_DATABASE_URL": "mysql://root@127.0.0.1:3306/from_env",
        "WATCHTOWER_HTTP_PORT": " 9400 ",
        "WATCHTOWER_RETENTION_AUTO": "yes",
        "WATCHTOWER_REDACT": "password, cookie",
        "WATCHTOWER_API_TOKEN": "s3cret",
        "WATCHTOWER_RECORDER_FLUSH_INTERVAL": "0.5",
        "NOT_OURS": "ignored",
    }
    settings = load_settings(env=env, cwd=tmp_path)
    assert settings.database_url == "mysql://root@127.0.0.1:3306/from_env"
    assert settings.http_port == 9400
    assert settings.http_host == "127.0.0.2"  # from the file, the environment did not set it
    assert settings.retention_auto is True
    assert settings.redact == ("password", "cookie")
    assert settings.http_token == "s3cret"
    assert settings.recorder_flush_interval == 0.5
    assert settings.sources["http.port"] == "environment variable WATCHTOWER_HTTP_PORT"
    assert settings.sources["http.token"] == "environment variable WATCHTOWER_API_TOKEN"

    flags = {"database_url": "postgresql://postgres@127.0.0.1:5432/from_flag", "http.port": 9500, "app": None}
    settings = load_settings(env=env, cwd=tmp_path, overrides=flags)
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/from_flag"
    assert settings.http_port == 9500
    assert settings.app is None  # a flag left out (None) changes nothing
    assert "command line" in settings.sources["database_url"]


def test_max_lost_from_the_file_and_the_environment(tmp_path: Path) -> None:
    write(tmp_path / "watchtower.toml", "max_lost = 5\n")
    assert load_settings(env={}, cwd=tmp_path).max_lost == 5
    settings = load_settings(env={"WATCHTOWER_MAX_LOST": "1"}, cwd=tmp_path)
    assert settings.max_lost == 1 and settings.sources["max_lost"] == "environment variable WATCHTOWER_MAX_LOST"


def test_every_key_has_one_environment_spelling() -> None:
    names = [env_name(key) for key in KEYS]
    assert len(set(names)) == len(names)
    assert env_name("retention.completed_days") == "WATCHTOWER_RETENTION_COMPLETED_DAYS"
    assert env_name("http.token") == "WATCHTOWER_API_TOKEN"


def test_a_pools_keys_come_from_the_file_the_environment_and_the_flags_in_that_order(tmp_path: Path) -> None:
    write(tmp_path / "watchtower.toml", """
[supervisors.default]
queues = ["default"]
min_processes = 1
max_processes = 4
threads = 2

[supervisors.high-prio]
queues = ["urgent"]
""")
    env = {
        "WATCHTOWER_SUPERVISORS_DEFAULT_MAX_PROCESSES": "8",
        "WATCHTOWER_SUPERVISORS_DEFAULT_QUEUES": "default, emails",
        "WATCHTOWER_SUPERVISORS_DEFAULT_TIMEOUT": "600",
        # A name with characters a variable cannot hold is spelt with underscores.
        "WATCHTOWER_SUPERVISORS_HIGH_PRIO_THREADS": "16",
        # A pool the file does not declare is made from the defaults and these values.
        "WATCHTOWER_SUPERVISORS_REPORTS_MIN_PROCESSES": "2",
    }
    settings = load_settings(env=env, cwd=tmp_path)
    default = settings.supervisor("default")
    assert default.queues == ("default", "emails") and default.max_processes == 8 and default.timeout == 600.0
    assert default.threads == 2  # from the file: the environment did not set it
    assert settings.supervisor("high-prio").threads == 16
    reports = settings.supervisor("reports")
    assert (reports.min_processes, reports.max_processes, reports.queues) == (2, 4, ("default",))
    assert settings.sources["supervisors.default.max_processes"] == (
        "environment variable WATCHTOWER_SUPERVISORS_DEFAULT_MAX_PROCESSES"
    )
    assert settings.sources["supervisors.default.threads"] == str(tmp_path / "watchtower.toml")

    flags = {"supervisors.default.min_processes": 3, "supervisors.default.max_processes": 3,
             "supervisors.default.threads": None}
    settings = load_settings(env=env, cwd=tmp_path, overrides=flags)
    assert (settings.supervisor("default").min_processes, settings.supervisor("default").max_processes) == (3, 3)
    assert settings.supervisor("default").threads == 2  # a flag left out (None) changes nothing
    assert settings.sources["supervisors.default.min_processes"] == "command line option --min-processes"


def test_without_a_file_the_environment_alone_shapes_the_default_pool(tmp_path: Path) -> None:
    settings = load_settings(env={"WATCHTOWER_SUPERVISORS_DEFAULT_THREADS": "3"}, cwd=tmp_path)
    assert set(settings.supervisors) == {"default"}
    assert settings.supervisor("default") == SupervisorSettings(threads=3)


def test_every_pool_key_has_one_environment_spelling(tmp_path: Path) -> None:
    from watchtower.config import SUPERVISOR_KEYS, pool_key

    assert env_name(pool_key("default", "max_processes")) == "WATCHTOWER_SUPERVISORS_DEFAULT_MAX_PROCESSES"
    assert env_name(pool_key("high-prio", "queues")) == "WATCHTOWER_SUPERVISORS_HIGH_PRIO_QUEUES"
    for field in SUPERVISOR_KEYS:  # every variable reads back as the key it was made from
        name = env_name(pool_key("a_min", field))
        settings = load_settings(env={name: "ok" if field == "queues" else "1"}, cwd=tmp_path)
        assert "supervisors.a_min." + field in settings.sources, name


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('databse_url = "sqlite:///x.db"\n', ["'databse_url'", "watchtower.toml", "database_url"]),
        ("[http]\nport = \"nine\"\n", ["'http.port'", "watchtower.toml", "whole number", "'nine'"]),
        ("[http]\nport = 9192.5\n", ["'http.port'", "whole number"]),
        ("[http]\nport = 70000\n", ["'http.port'", "65535"]),
        ("[retention]\ncompleted_days = -1\n", ["'retention.completed_days'", "negative", "-1"]),
        ("[retention]\nauto = \"yes\"\n", ["'retention.auto'", "true or false"]),
        ("[recorder]\nbuffer_size = 0\n", ["'recorder.buffer_size'", "at least 1"]),
        ("[recorder]\nflush_interval = 0\n", ["'recorder.flush_interval'", "greater than 0"]),
        ("heartbeat_interval = 0\n", ["'heartbeat_interval'", "greater than 0"]),
        ("max_lost = 0\n", ["'max_lost'", "watchtower.toml", "at least 1"]),
        ("max_lost = 2.5\n", ["'max_lost'", "whole number", "2.5"]),
        ("[retention]\ninterval = 0\n", ["'retention.interval'", "greater than 0"]),
        ('database_url = "postgres:/nohost"\n', ["database_url", "watchtower.toml", "postgres:/nohost"]),
        ('database_url = "oracle://db/x"\n', ["database_url", "unknown scheme", "sqlite:///"]),
        ('command_bus = "kafka"\n', ["'command_bus'", "watchtower.toml", "database, redis", "'kafka'"]),
        ('redis_url = "localhost:6379"\n', ["'redis_url'", "redis://"]),
        ('[http]\nprefix = "watchtower/"\n', ["'http.prefix'", "start with '/'"]),
        ("redact = [1, 2]\n", ["'redact'", "list of names"]),
        ("retention = 5\n", ["'retention'", "unknown setting"]),
        ("[supervisors.mail]\nqueue = [\"a\"]\n", ["'queue'", "[supervisors.mail]", "queues"]),
        ("[supervisors.mail]\nthreads = -2\n", ["'supervisors.mail.threads'", "must be from 1 to 256, not -2"]),
        ("[supervisors.mail]\nmin_processes = 5\nmax_processes = 2\n", ["[supervisors.mail]", "min_processes (5)"]),
        ("[supervisors.mail]\nmin_processes = 5\n", ["min_processes (5) from", "watchtower.toml",
                                                       "max_processes (4) from the defaults"]),
        ("[supervisors.mail]\nqueues = []\n", ["[supervisors.mail]", "at least one queue"]),
        ("this is not toml\n", ["watchtower.toml", "not valid TOML"]),
    ],
)
def test_a_bad_file_value_names_the_key_and_the_file(tmp_path: Path, toml: str, words: list[str]) -> None:
    write(tmp_path / "watchtower.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(env={}, cwd=tmp_path)
    message = str(caught.value)
    assert "\n" not in message  # one line, for the CLI
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"WATCHTOWER_DATABASE_URI": "sqlite:///x.db"}, ["WATCHTOWER_DATABASE_URI", "WATCHTOWER_DATABASE_URL"]),
        ({"WATCHTOWER_HTTP_PORT": "80a"}, ["'http.port'", "WATCHTOWER_HTTP_PORT", "whole number"]),
        ({"WATCHTOWER_HTTP_PORT": "-1"}, ["'http.port'", "WATCHTOWER_HTTP_PORT", "negative"]),
        ({"WATCHTOWER_RETENTION_FAILED_DAYS": "nan"}, ["'retention.failed_days'", "finite"]),
        ({"WATCHTOWER_RETENTION_AUTO": "maybe"}, ["'retention.auto'", "true or false"]),
        ({"WATCHTOWER_DATABASE_URL": "sqlite://"}, ["database_url", "WATCHTOWER_DATABASE_URL", "names no file"]),
        ({"WATCHTOWER_DATABASE_URL": "mysql://root@host:port/db"}, ["database_url", "bad port"]),
        ({"WATCHTOWER_DATABASE_URL": "just-a-file.db"}, ["database_url", "not a URL"]),
        ({"WATCHTOWER_RECORDER_BATCH_SIZE": "0"}, ["'recorder.batch_size'", "at least 1"]),
        ({"WATCHTOWER_RECORDER_NICE": "20"}, ["'recorder.nice'", "WATCHTOWER_RECORDER_NICE", "0 to 19"]),
        ({"WATCHTOWER_RECORDER_NICE": "-5"}, ["'recorder.nice'", "0 to 19", "-5"]),
        ({"WATCHTOWER_MAX_LOST": "0"}, ["'max_lost'", "WATCHTOWER_MAX_LOST", "at least 1", "0"]),
        ({"WATCHTOWER_MAX_LOST": "three"}, ["'max_lost'", "WATCHTOWER_MAX_LOST", "whole number", "'three'"]),
        ({"WATCHTOWER_CONFIG": "/nonexistent/watchtower.toml"}, ["/nonexistent/watchtower.toml", "does not exist"]),
        ({"WATCHTOWER_SUPERVISORS_DEFAULT_PROCESSES": "2"},
         ["WATCHTOWER_SUPERVISORS_DEFAULT_PROCESSES", "WATCHTOWER_SUPERVISORS_<NAME>_<KEY>", "MIN_PROCESSES"]),
        ({"WATCHTOWER_SUPERVISORS_THREADS": "2"}, ["WATCHTOWER_SUPERVISORS_THREADS", "<NAME>"]),
        ({"WATCHTOWER_SUPERVISORS_DEFAULT_THREADS": "0"},
         ["'supervisors.default.threads'", "WATCHTOWER_SUPERVISORS_DEFAULT_THREADS", "must be from 1 to 256"]),
        ({"WATCHTOWER_SUPERVISORS_DEFAULT_MIN_PROCESSES": "9"},
         ["min_processes (9) from environment variable WATCHTOWER_SUPERVISORS_DEFAULT_MIN_PROCESSES"]),
        ({"WATCHTOWER_SUPERVISORS_DEFAULT_QUEUES": " , "}, ["[supervisors.default]", "at least one queue"]),
    ],
)
def test_a_bad_environment_value_names_the_key_and_the_variable(
    tmp_path: Path, env: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env, cwd=tmp_path)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_bad_database_urls_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(DatabaseURLError) as caught:
        load_settings(env={"WATCHTOWER_DATABASE_URL": "postgresql:///nohost"}, cwd=tmp_path)
    assert isinstance(caught.value, ConfigError)  # the CLI exits 2 for it, like any setting


def test_a_bad_flag_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'http\.port' from command line option --http\.port must be a whole number"):
        load_settings(env={}, cwd=tmp_path, overrides={"http.port": "x"})
    with pytest.raises(ConfigError, match="unknown setting 'no_such_key' in command line option"):
        load_settings(env={}, cwd=tmp_path, overrides={"no_such_key": 1})


def test_importing_reads_no_environment_and_loading_does(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.checkout import subprocess_env

    code = "import watchtower; print('imported'); watchtower.load_settings()"
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(WATCHTOWER_BOGUS="1"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "imported"  # the import itself did not look at WATCHTOWER_BOGUS
    assert out.returncode != 0 and "unknown environment variable WATCHTOWER_BOGUS" in out.stderr
