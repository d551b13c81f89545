"""The Grafana dashboards under grafana/: generated, complete, and true to the exporter and the rules.

No Grafana runs here: these tests read the JSON as Grafana would (see
tests/support/grafana.py for the variable expansion) and parse every query with
promql-parser.  tests/test_pack_live.py runs the same queries against a real
Prometheus scraping a real supervisor.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.support.grafana import (
    ALL,
    DASHBOARDS,
    TimeRange,
    dashboards,
    expand,
    interpolate,
    panels,
    parse_label_values,
    variable_query,
    variables,
)
from tests.support.prometheus_pack import alerts, exported_metrics, recorded, rules

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
UIDS = {"watchtower-overview", "watchtower-queues", "watchtower-workers", "watchtower-failures"}
#: Series Prometheus makes itself, which a panel may use besides Watchtower's.
PROMETHEUS_SERIES = {"up"}
#: A duration no panel writes by hand: $__rate_interval expands to it in these tests.
SENTINEL_RATE = "7777s"
#: The queue values the selections below try ("All" aside).
QUEUES = ["demo", "demo-slow"]


def targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard uid, panel, target) for every query of every dashboard."""
    return [(uid, item, target) for uid, board in dashboards().items() for item in panels(board)
            for target in item["targets"]]


def queue_labelled(name: str) -> bool:
    """Series with a ``queue`` label: the job metrics, the queue depths, the per-queue recorded rules."""
    if name.startswith("watchtower:"):
        return name in recorded() and not constant_rules().get(name, False)
    return name.startswith("watchtower_job") or name == "watchtower_queue_messages"


def constant_rules() -> dict[str, bool]:
    return {rule["record"]: rule["expr"].strip().startswith("vector(") for rule in rules() if "record" in rule}


def expansion(board: dict[str, Any], selection: dict[str, list[str]], *, rate: str | None = None) -> dict[str, str]:
    """Variable name -> text, for ``selection`` (ALL where not given) over the dashboards' default hour."""
    now = time.time()
    values = TimeRange(start=now - 3600, end=now, scrape_interval=15).builtins()
    if rate is not None:
        values["__rate_interval"] = rate
    for name, variable in variables(board).items():
        if variable["type"] == "datasource":
            values[name] = "watchtower-prometheus"
        else:
            values[name] = interpolate(variable, selection.get(name, [ALL]), options=QUEUES)
    return values


def selectors(expr: str) -> list[Any]:
    found: list[Any] = []
    promql_parser.walk(promql_parser.parse(expr),
                       lambda node: found.append(node) if isinstance(node, promql_parser.VectorSelector) else None)
    return found


def test_regenerating_the_dashboards_changes_nothing(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    generated = {path.name: path.read_text() for path in tmp_path.glob("*.json")}
    committed = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert set(generated) == set(committed) == {f"{uid}.json" for uid in UIDS}
    for name, text in generated.items():
        assert committed[name] == text, f"{name} differs from grafana/generate.py's output: run it and commit"
    check = subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_every_dashboard_has_the_datasource_job_and_queue_variables() -> None:
    boards = dashboards()
    assert set(boards) == UIDS
    for uid, board in boards.items():
        found = variables(board)
        assert {"datasource", "job", "queue"} <= set(found), uid
        assert found["datasource"]["type"] == "datasource" and found["datasource"]["query"] == "prometheus"
        for name in set(found) - {"datasource"}:
            variable = found[name]
            assert variable["type"] == "query" and variable["datasource"]["uid"] == "${datasource}", (uid, name)
            assert variable["multi"] and variable["includeAll"], (uid, name)
            selector, label = parse_label_values(variable_query(variable))
            assert label == name, (uid, name)
            assert selector is not None and selector.split("{")[0] in exported_metrics(), (uid, name)
        # Each dashboard's panels use the variables it declares (and only those).
        used = {ref for item in panels(board) for target in item["targets"]
                for ref in re.findall(r"\$(\w+)", target["expr"]) if not ref.startswith("__")}
        assert used <= set(found) and {"job", "queue"} <= used, uid
    assert "supervisor" in variables(boards["watchtower-workers"])


def test_alert_links_open_dashboards_that_exist_with_variables_they_have() -> None:
    boards = dashboards()
    for alert in alerts():
        link = alert["annotations"]["dashboard"]
        found = re.fullmatch(r"/d/([\w-]+)(?:\?(.*))?", link)
        assert found, (alert["alert"], link)
        assert found.group(1) in boards, (alert["alert"], link)
        for parameter in filter(None, (found.group(2) or "").split("&")):
            name = parameter.split("=")[0].removeprefix("var-")
            assert name in variables(boards[found.group(1)]), (alert["alert"], link)


def test_every_panel_has_a_unit_a_description_and_uses_the_datasource_variable() -> None:
    for uid, board in dashboards().items():
        ids = [item["id"] for item in panels(board)]
        assert len(ids) == len(set(ids)), uid
        for item in panels(board):
            where = (uid, item["title"])
            assert item["description"].strip(), where
            assert item["fieldConfig"]["defaults"]["unit"], where
            assert item["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            for target in item["targets"]:
                assert target["datasource"]["uid"] == "${datasource}" and target["expr"].strip(), where
            grid = item["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, where


@pytest.mark.parametrize("selection", [{}, {"queue": ["demo-slow"]}, {"queue": QUEUES, "job": ["watchtower"]}],
                         ids=["all", "one-queue", "two-queues"])
def test_every_query_parses_once_expanded_and_names_only_known_series(selection: dict[str, list[str]]) -> None:
    known = exported_metrics() | recorded() | PROMETHEUS_SERIES
    checked = 0
    for uid, item, target in targets():
        expr = expand(target["expr"], expansion(dashboards()[uid], selection))
        assert "$" not in expr, (uid, item["title"], expr)
        for selector in selectors(expr):
            name = re.sub(r"_(bucket|sum|count)$", "", selector.name) if selector.name.startswith("watchtower_") \
                else selector.name
            assert name in known, f"{uid} / {item['title']}: {selector.name} is neither exported nor recorded"
        checked += 1
    assert checked >= 40


def test_job_metrics_are_filtered_by_the_job_and_queue_variables() -> None:
    for uid, item, target in targets():
        board = dashboards()[uid]
        values = expansion(board, {"job": ["JOBVAR"], "queue": ["QUEUEVAR"], "supervisor": ["SUPVAR"]})
        for selector in selectors(expand(target["expr"], values)):
            matchers = {(m.name, m.value) for m in selector.matchers.matchers}
            where = f"{uid} / {item['title']}: {selector.name}"
            if selector.name.startswith("watchtower_") or selector.name == "up":
                assert ("job", "JOBVAR") in matchers, where
            if queue_labelled(selector.name):
                assert ("queue", "QUEUEVAR") in matchers, where
            if selector.name in ("watchtower_workers", "watchtower_worker_resident_memory_bytes",
                                 "watchtower_worker_restarts_total") and "supervisor" in variables(board):
                assert ("supervisor", "SUPVAR") in matchers, where


def test_rates_use_rate_interval() -> None:
    for uid, item, target in targets():
        expr = expand(target["expr"], expansion(dashboards()[uid], {}, rate=SENTINEL_RATE))
        calls: list[Any] = []
        promql_parser.walk(promql_parser.parse(expr),
                           lambda node, calls=calls: calls.append(node)
                           if isinstance(node, promql_parser.Call) else None)
        for call in calls:
            if call.func.name in ("rate", "irate", "increase"):
                [window] = [arg for arg in call.args if isinstance(arg, promql_parser.MatrixSelector)]
                assert window.range == timedelta(seconds=7777), f"{uid} / {item['title']}: {target['expr']}"


def test_the_provisioning_points_grafana_at_prometheus_and_at_the_dashboards() -> None:
    [source] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"]
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]["scrape_interval"]
    # $__rate_interval is computed from timeInterval: it must be the scrape interval.
    assert source["jsonData"]["timeInterval"] == scrape
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "watchtower.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
