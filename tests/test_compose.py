"""docker-compose.yml and the Dockerfile, checked without Docker (no engine runs on these machines).

The compose file is parsed strictly by ``compose-spec`` (unknown keys, wrong
types and bad durations are errors), then cross-checked against what the
services run: every Watchtower service's environment loads as settings (the
Dockerfile's ENV under the service's own), its URLs name the compose
services and their credentials, its command parses as the CLI would parse
it, and the ports, mounts and targets of Prometheus and Grafana agree with
prometheus/compose.yml and grafana/provisioning/.  What this does not show:
that the images build and the containers start (see the report / README).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import compose_spec
import pytest
import yaml

from tests.support.prometheus_pack import promtool
from watchtower.config import load_settings
from watchtower.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
sys.path.insert(0, str(ROOT / "examples"))

import demo_stream  # noqa: E402  (examples/ is not a package)


def compose_text() -> str:
    return COMPOSE.read_text()


def parse(text: str) -> Any:
    """The compose file as compose-spec reads it (YAML merge keys applied), validated."""
    project = compose_spec.PyOptions(apply_merge=True).from_yaml(text)
    project.validate()
    return project


def services() -> dict[str, Any]:
    return dict(parse(compose_text()).services)


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the environment: the default."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)


# The Dockerfile --------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        instruction, _, arguments = (pending + raw).strip().partition(" ")
        lines.append((instruction.upper(), arguments.strip()))
        pending = ""
    return lines


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile():
        if instruction == "ENV":
            env.update(dict(part.split("=", 1) for part in shlex.split(arguments)))
    return env


def image_path(path: str) -> Path:
    """The checkout file that the image holds at ``path`` (what COPY put there, under WORKDIR)."""
    workdir = PurePosixPath("/")
    copies: list[tuple[Path, PurePosixPath]] = []  # (checkout path, where it lands in the image)
    for instruction, arguments in dockerfile():
        if instruction == "WORKDIR":
            workdir = workdir / arguments
        elif instruction == "COPY":
            *sources, dest = shlex.split(arguments)
            into = workdir / dest
            for source in sources:
                local = ROOT / source
                # A directory's contents land in dest; a file lands in dest/ (or as dest).
                lands = into if local.is_dir() or not (dest.endswith("/") or len(sources) > 1) else into / local.name
                copies.append((local, lands))
    wanted = PurePosixPath(path)
    for local, lands in copies:
        if wanted == lands or lands in wanted.parents:
            return local / wanted.relative_to(lands)
    raise AssertionError(f"{path} is not copied into the image by the Dockerfile")


# Tests ---------------------------------------------------------------------------------


def test_the_compose_file_parses_strictly_and_a_typo_would_not() -> None:
    project = parse(compose_text())
    assert set(project.service_names()) == {"redis", "postgres", "supervisor", "api", "producer", "prometheus",
                                            "grafana"}
    # The parser is strict: these are what a slip of the pen gives.
    for broken in (compose_text().replace("    ports:", "    port:", 1),
                   compose_text().replace("interval: 5s", "interval: 5 seconds", 1),
                   compose_text().replace("condition: service_healthy", "condition: healthy", 1)):
        with pytest.raises(ValueError):
            parse(broken)


def test_every_reference_resolves_services_volumes_and_mounted_paths() -> None:
    found = services()
    declared_volumes = set(parse(compose_text()).volumes or {})
    for name, service in found.items():
        for dependency in service.depends_on or {}:
            assert dependency in found, (name, dependency)
        for volume in service.volumes or ():
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, volume)
            else:
                assert source in declared_volumes, (name, volume)
        if service.build is not None:
            assert (ROOT / "Dockerfile").exists()
    published = [port.split(":")[-2] for service in found.values() for port in service.ports or ()]
    assert len(published) == len(set(published)), f"a host port published twice: {published}"


def exposed(service: Any) -> set[int]:
    """The container ports a service exposes to the others (compose-spec reads "9192" as a number)."""
    return {int(float(port)) for port in service.expose or ()}


def watchtower_services() -> dict[str, Any]:
    return {name: service for name, service in services().items() if service.image == "dramatiq-watchtower:demo"}


def settings_of(service: Any) -> Any:
    """The settings the service's processes load: the image's ENV under the service's, its config file."""
    env = {**image_env(), **{key: interpolate(str(value)) for key, value in (service.environment or {}).items()}}
    config = image_path(env.pop("WATCHTOWER_CONFIG"))
    return load_settings(config, env={k: v for k, v in env.items() if k.startswith("WATCHTOWER_")}), env


def test_the_watchtower_services_settings_load_and_name_the_compose_services() -> None:
    found = services()
    postgres = found["postgres"].environment
    chosen = watchtower_services()
    assert set(chosen) == {"supervisor", "api", "producer"}
    for name, service in chosen.items():
        try:
            settings, env = settings_of(service)
        except ConfigError as error:
            pytest.fail(f"{name}: {error}")
        assert settings.app == "demo_app" and (ROOT / "examples" / "demo_app.py").exists()
        database = urlsplit(settings.database_url)
        assert database.hostname == "postgres" and database.port in (None, 5432), name
        assert (database.username, database.password, database.path.lstrip("/")) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]), name
        assert settings.command_bus == "redis" and urlsplit(settings.redis_url).hostname == "redis", name
        assert urlsplit(env["DEMO_REDIS_URL"]).hostname == "redis", name
        assert {"redis", "postgres"} <= set(service.depends_on), name
        # The image's PYTHONPATH makes the app importable by name.
        assert image_path(env["PYTHONPATH"] + "/demo_app.py").exists()


def cli_command(service: Any) -> tuple[str, click.Context]:
    """The watchtower subcommand a service runs, parsed by the real CLI."""
    from watchtower import commands  # noqa: F401  (registers the subcommands)
    from watchtower.cli import cli

    program, name, *args = service.command
    assert program == "watchtower"
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, name
    return name, command.make_context(name, list(args))


def test_the_supervisor_serves_metrics_where_prometheus_scrapes_it() -> None:
    found = services()
    name, context = cli_command(found["supervisor"])
    assert name == "supervise"
    settings, _env = settings_of(found["supervisor"])
    settings.supervisor(context.params["name"])  # the pool exists in examples/watchtower.toml
    # Reachable from the prometheus container, on the port it scrapes.
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port in exposed(found["supervisor"])
    scrape = yaml.safe_load((ROOT / "prometheus" / "compose.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["watchtower"]["static_configs"][0]["targets"] == [f"supervisor:{settings.http_port}"]
    assert jobs["watchtower"].get("metrics_path", "/metrics") == "/metrics"
    # The producer's own /metrics: its --metrics-port, exposed, scraped.
    program, script, *args = found["producer"].command
    assert program == "python" and image_path(f"/app/{script}") == ROOT / "examples" / "demo_stream.py"
    options = demo_stream.parse_args(args)
    assert options.metrics_host == "0.0.0.0" and options.metrics_port in exposed(found["producer"])
    assert jobs["watchtower-producers"]["static_configs"][0]["targets"] == [f"producer:{options.metrics_port}"]
    # Every target is a service of the stack.
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            assert target.split(":")[0] in found, target


def test_the_api_listens_beyond_loopback_only_with_a_token() -> None:
    from watchtower.web.auth import check_bind

    service = services()["api"]
    name, context = cli_command(service)
    assert name == "serve"
    settings, _env = settings_of(service)
    from dataclasses import replace

    served = replace(settings, http_host=context.params["host"], http_port=context.params["port"])
    assert served.http_token, "the API binds 0.0.0.0: it needs WATCHTOWER_API_TOKEN"
    check_bind(served)  # raises ConfigError when serve would refuse to start
    assert [port.split(":")[-1] for port in service.ports] == [str(served.http_port)]


def test_prometheus_in_compose_loads_the_pack_and_listens_where_grafana_looks() -> None:
    service = services()["prometheus"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service.volumes}
    flags = dict(flag.lstrip("-").split("=", 1) for flag in service.command)
    config_path = PurePosixPath(flags["config.file"])
    [(mount, source)] = [(m, s) for m, s in mounts.items() if PurePosixPath(m) in config_path.parents]
    config_file = ROOT / source / config_path.relative_to(mount)
    assert config_file == ROOT / "prometheus" / "compose.yml"
    result = promtool("check", "config", config_file.name)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same settings and rules as prometheus/prometheus.yml: only the targets differ.
    ours = yaml.safe_load(config_file.read_text())
    reference = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert ours["global"] == reference["global"] and ours["rule_files"] == reference["rule_files"]
    port = flags["web.listen-address"].rsplit(":", 1)[1]
    [source] = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert source["url"] == f"http://prometheus:{port}"
    assert [p.split(":")[-1] for p in service.ports] == [port]


def test_grafana_in_compose_gets_the_provisioning_and_the_dashboards() -> None:
    service = services()["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service.volumes}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    [provider] = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "watchtower.yml").read_text())[
        "providers"]
    dashboards_at = provider["options"]["path"]
    assert mounts[dashboards_at] == "./grafana/dashboards"
    home = PurePosixPath(service.environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == dashboards_at
    board = json.loads((ROOT / "grafana" / "dashboards" / home.name).read_text())
    assert board["uid"] == "watchtower-overview"
    assert "prometheus" in service.depends_on


def test_the_dockerfile_copies_files_that_exist_and_runs_a_real_command() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    instructions = dockerfile()
    copied = []
    for instruction, arguments in instructions:
        if instruction == "COPY":
            copied.extend(shlex.split(arguments)[:-1])
    assert copied, "the Dockerfile copies nothing"
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source.rstrip("/"), pattern) for pattern in ignored), source
    # The package build needs its readme (pyproject's readme) in the context.
    assert "README.md" in copied and "pyproject.toml" in copied
    assert image_path(image_env()["WATCHTOWER_CONFIG"]) == ROOT / "examples" / "watchtower.toml"
    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    [cmd] = [json.loads(arguments) for instruction, arguments in instructions if instruction == "CMD"]
    assert cmd[0] == "watchtower"
    result = subprocess.run([sys.executable, "-m", "watchtower", *cmd[1:], "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
