"""The worker options are declared once (watchtower/options.py), and every entry point takes them from there.

For each option, the smallest and the largest value are accepted and the
values just outside are refused, with the same "must be from A to B" words,
by the settings (a pool's keys, from the file's types and from environment
text), by ``check_options`` (WorkerManager, a supervisor's inbox), by the
API's start request and the console's form, and by the flags of
``watchtower worker`` and ``watchtower supervise``.  The argv a supervisor
starts a worker with parses back, through the worker's own flags, to the
options the supervisor meant.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import click.testing
import pytest

from tests.support.console_client import CONSOLE, console_app, logged_in, text_of
from tests.support.lab import Lab
from tests.support.servers import unique
from tests.support.web_api import client, web_settings
from watchtower import store
from watchtower.cli import cli
from watchtower.commands.worker import worker as worker_command
from watchtower.config import SUPERVISOR_KEYS, SupervisorSettings, env_name, load_settings, pool_key
from watchtower.errors import ConfigError, WorkerError
from watchtower.options import WORKER_OPTIONS, WorkerOption, as_flags
from watchtower.pool import Slot, SlotKind, check_options, worker_options
from watchtower.supervisor import Supervisor
from watchtower.web import create_app
from watchtower.web.system import openapi_document
from watchtower.worker import WorkerOptions, resolve_options

OPTIONS = list(WORKER_OPTIONS.values())


def edges(option: WorkerOption[Any]) -> tuple[list[int | float], list[int | float]]:
    """The values at the edges of ``option``'s range, and those just outside it."""
    step = 1 if option.whole else 0.5
    return [option.smallest, option.largest], [option.smallest - step, option.largest + step]


def says_range(option: WorkerOption[Any], value: int | float) -> str:
    return f"must be {option.bounds}, not {value!r}"


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """An empty settings file: the tests read neither the checkout's files nor the environment's."""
    path = tmp_path / "watchtower.toml"
    path.write_text("")
    return path


@pytest.fixture(autouse=True)
def no_watchtower_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WATCHTOWER_"):
            monkeypatch.delenv(name)


# The table ------------------------------------------------------------------------------


def test_the_table_gives_the_settings_their_keys_types_and_defaults() -> None:
    defaults = SupervisorSettings()
    for name, option in WORKER_OPTIONS.items():
        assert SUPERVISOR_KEYS[name] is option.kind
        assert getattr(defaults, name) == option.default and type(getattr(defaults, name)) is option.kind
        assert option.problem(option.default) is None
    assert [f.name for f in dataclasses.fields(WorkerOptions) if f.name != "queues"] == list(WORKER_OPTIONS)
    # a start request's defaults: the supervisor's settings
    assert worker_options(defaults) == {name: option.default for name, option in WORKER_OPTIONS.items()}


def test_the_api_document_takes_the_tables_ranges() -> None:
    properties = openapi_document()["components"]["schemas"]["StartRequest"]["properties"]
    assert set(WORKER_OPTIONS) <= set(properties)
    for name, option in WORKER_OPTIONS.items():
        schema = properties[name]
        assert schema["type"] == ("integer" if option.whole else "number"), name
        assert (schema["minimum"], schema["maximum"]) == (option.smallest, option.largest), name


# One range everywhere -----------------------------------------------------------------------


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_the_settings_take_the_tables_range(option: WorkerOption[Any], tmp_path: Path) -> None:
    key = pool_key("default", option.name)
    good, bad = edges(option)
    for value in good:
        assert getattr(load_settings(env={}, overrides={key: value}, cwd=tmp_path).supervisor("default"),
                       option.name) == value
        from_text = load_settings(env={env_name(key): str(value)}, cwd=tmp_path)
        assert getattr(from_text.supervisor("default"), option.name) == value
    for value in bad:
        with pytest.raises(ConfigError, match=re.escape(f"setting {key!r} from command line option "
                                                        f"--{option.name} {says_range(option, value)}")):
            load_settings(env={}, overrides={key: value}, cwd=tmp_path)
        with pytest.raises(ConfigError, match=re.escape(f"from environment variable {env_name(key)} "
                                                        f"{says_range(option, value)}")):
            load_settings(env={env_name(key): str(value)}, cwd=tmp_path)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_check_options_takes_the_tables_range(option: WorkerOption[Any]) -> None:
    good, bad = edges(option)
    for value in good:
        assert check_options({option.name: value}) == {option.name: value}
    for value in bad:
        with pytest.raises(WorkerError, match=re.escape(f"worker option {option.name!r} {says_range(option, value)}")):
            check_options({option.name: value})
    wrong = "3" if not option.whole else 2.0
    with pytest.raises(WorkerError, match=re.escape(f"must be {'a whole number' if option.whole else 'a number'} "
                                                    f"{option.bounds}")):
        check_options({option.name: wrong})


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_the_apis_start_request_takes_the_tables_range(option: WorkerOption[Any], lab: Lab) -> None:
    api = client(create_app(web_settings(lab.database_url, lab.namespace)))
    good, bad = edges(option)
    for value in good:
        answer = api.simulate_post("/watchtower/workers/start", json={"queue": "q", option.name: value})
        assert answer.status_code == 202, answer.text
        assert answer.json["options"] == {option.name: value}
    for value in bad:
        answer = api.simulate_post("/watchtower/workers/start", json={"queue": "q", option.name: value})
        assert answer.status_code == 422, answer.text
        assert answer.json["description"] == f"{option.name!r} {says_range(option, value)}"


def test_the_consoles_start_form_has_every_option_with_the_apis_check(sqlite_url: str, redis_namespace: str) -> None:
    store.connect(sqlite_url)
    browser = logged_in(console_app(sqlite_url, redis_namespace))
    page = browser.get(CONSOLE + "/workers").text
    for option in OPTIONS:
        assert f'name="{option.name}"' in page and f'<label for="start-{option.name}">{option.label}</label>' in page
        _, (_, above) = edges(option)
        refused = browser.act(f"{CONSOLE}/workers/start", queue="default", **{option.name: str(above)})
        assert refused.status_code == 422 and f"{option.name!r} {says_range(option, above)}" in text_of(refused.text)


def run_cli(config_file: Path, *args: str) -> click.testing.Result:
    database = f"sqlite:///{config_file.parent / 'ledger.db'}"
    return click.testing.CliRunner().invoke(cli, ["--config", str(config_file), "--database-url", database, *args])


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_the_worker_flags_take_the_tables_range(option: WorkerOption[Any], config_file: Path) -> None:
    help_text = " ".join(run_cli(config_file, "worker", "--help").output.split())
    assert f"{option.flag} {option.metavar} {option.help_text}" in help_text
    good, bad = edges(option)
    settings = load_settings(config_file, env={})
    for value in good:
        parsed = worker_command.make_context("worker", [option.flag, str(value)])
        assert parsed.params[option.name] == value
        limits = {name: parsed.params[name] for name in WORKER_OPTIONS}
        assert getattr(resolve_options(settings, None, (), **limits), option.name) == value
    for value in bad:
        # The real command: one line, exit 2 (and the worker's row says why).
        result = run_cli(config_file, "worker", "--app", "apps.basic", "--worker-id", unique("bad"),
                         option.flag, str(value))
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == f"Error: {option.flag} {says_range(option, value)}"


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_the_supervise_flags_take_the_tables_range(option: WorkerOption[Any], config_file: Path) -> None:
    help_text = " ".join(run_cli(config_file, "supervise", "--help").output.split())
    assert f"{option.flag} {option.metavar} {option.help_text}" in help_text
    _, bad = edges(option)
    for value in bad:
        result = run_cli(config_file, "supervise", "tasks", option.flag, str(value))
        assert isinstance(result.exception, ConfigError), result.output
        assert str(result.exception) == (f"setting 'supervisors.default.{option.name}' from command line option "
                                         f"{option.flag} {says_range(option, value)}")


def test_supervise_keeps_t_for_threads(config_file: Path) -> None:
    result = run_cli(config_file, "supervise", "tasks", "-t", "0")
    assert isinstance(result.exception, ConfigError)
    assert "from command line option --threads must be from 1 to 256, not 0" in str(result.exception)


# The supervisor's argv ----------------------------------------------------------------------


def test_the_argv_a_supervisor_builds_parses_back_to_the_same_options(tmp_path: Path) -> None:
    settings = load_settings(env={}, overrides={"app": "apps.basic", "supervisors.default.sleep": 1 / 3}, cwd=tmp_path)
    supervisor = Supervisor(settings, env={})
    requested = check_options({"threads": 256, "tries": 1, "timeout": 0.1, "memory": 0, "rest": 2.5})
    slot = Slot(kind=SlotKind.REQUEST, queues=("emails", "sms"), options=worker_options(supervisor.config, requested))
    argv = supervisor._command("w-1", slot)
    assert as_flags(slot.options) == argv[-2 * len(WORKER_OPTIONS):]

    parsed = worker_command.make_context("worker", argv[argv.index("worker") + 1:])
    assert parsed.params["queues"] == ("emails", "sms") and parsed.params["supervisor"] == "default"
    limits = {name: parsed.params[name] for name in WORKER_OPTIONS}
    options = resolve_options(settings, parsed.params["supervisor"], parsed.params["queues"], **limits)
    assert options.as_row() == slot.options == {
        "threads": 256, "tries": 1, "timeout": 0.1, "memory": 0, "sleep": 1 / 3, "rest": 2.5,
    }
    assert all(type(value) is WORKER_OPTIONS[name].kind for name, value in options.as_row().items())
