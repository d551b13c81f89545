"""The Prometheus pack under prometheus/: valid for Prometheus 2.42, unit-tested, true to the exporter.

promtool (Debian's ``prometheus`` package) checks the configuration and the
rule files and runs the unit tests in prometheus/tests/.  The other tests
read the pack as data: every metric an expression names is one the exporter
defines or a recording rule of the pack, every alert carries its texts and a
dashboard link and has a unit test where it fires and one where it does not,
and the queue-wait threshold is a bucket boundary of the histogram.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.prometheus_pack import PACK, RULE_FILES, alerts, exported_metrics, promtool, recorded, rules
from watchtower.config import Settings
from watchtower.metrics import DURATION_BUCKETS

UNIT_TESTS = sorted((PACK / "tests").glob("*.yml"))


#: How the alerts' dashboard_url annotations begin: the Grafana address of watchtower:grafana:info, joined.
GRAFANA_ADDRESS = (
    '{{ with query "watchtower:grafana:info" }}{{ . | first | label "url" | reReplaceAll "/+$" "" }}{{ end }}'
)


def test_promtool_check_config_passes() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # check config also checks the rule files it names: both must be there.
    for path in RULE_FILES:
        assert str(path.relative_to(PACK)) in result.stdout


def test_promtool_check_rules_passes_on_every_rule_file() -> None:
    assert len(RULE_FILES) == 2
    result = promtool("check", "rules", *(str(path.relative_to(PACK)) for path in RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests under prometheus/tests/"
    result = promtool("test", "rules", *(str(path.relative_to(PACK)) for path in UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout


def test_the_scrape_config_points_at_the_supervisors_default_address() -> None:
    config = yaml.safe_load((PACK / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["job_name"] == "watchtower"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    defaults = Settings()
    assert job["static_configs"][0]["targets"] == [f"{defaults.http_host}:{defaults.http_port}"]
    assert config["rule_files"] == [str(path.relative_to(PACK)) for path in RULE_FILES]


def test_every_metric_named_in_the_rules_is_exported_or_recorded() -> None:
    exported = exported_metrics()
    # The modules' names, so that a broken parse cannot pass this test vacuously.
    assert {"watchtower_jobs_failed_total", "watchtower_queue_messages", "watchtower_workers",
            "watchtower_job_queue_wait_seconds"} <= exported
    records = recorded()
    unknown = []
    for rule in rules():
        for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", rule["expr"]):
            if token.startswith("watchtower_"):
                name = re.sub(r"_(bucket|sum|count)$", "", token)
                if name not in exported:
                    unknown.append((rule.get("alert") or rule.get("record"), token))
            elif token.startswith("watchtower:") and token not in records:
                unknown.append((rule.get("alert") or rule.get("record"), token))
    assert not unknown, f"metrics no exporter defines and no rule records: {unknown}"


def test_every_alert_has_severity_texts_and_a_dashboard_link() -> None:
    for alert in alerts():
        assert alert["labels"]["severity"] in ("page", "ticket", "warning"), alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), alert["alert"]
        assert annotations["dashboard"].startswith("/d/watchtower-"), alert["alert"]
        assert annotations["dashboard_url"] == GRAFANA_ADDRESS + annotations["dashboard"], alert["alert"]


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_is_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {alert["alert"] for alert in alerts()}
    assert len(names) == 15
    assert names - fires == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                for expected in check.get("exp_alerts") or []:
                    # Firing cases pin the whole texts, not just the labels.
                    assert set(expected["exp_annotations"]) == {"summary", "description", "dashboard",
                                                                "dashboard_url"}, case["name"]


@pytest.mark.parametrize("window", ["5m", "30m", "1h", "2h", "6h", "1d"])
def test_the_queue_wait_threshold_is_one_bucket_boundary_used_everywhere(window: str) -> None:
    by_name = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    threshold = float(
        re.fullmatch(r"vector\((.+)\)", by_name["watchtower:slo_queue_wait_seconds:threshold"].strip())[1]
    )
    assert threshold in DURATION_BUCKETS, "the queue-wait threshold must be a bucket boundary of the histogram"
    expr = by_name[f"watchtower:job_queue_wait_slow_ratio:rate{window}"]
    # prometheus-client writes bucket boundaries as Python floats: le="30.0".
    assert re.findall(r'le="([^"]+)"', expr) == [repr(float(threshold))]


def test_the_grafana_address_is_one_setting_that_every_dashboard_link_follows(tmp_path: Path) -> None:
    """Set watchtower:grafana:info's url (with a trailing slash) and a firing alert links there.

    A copy of the pack with another address and a promtool unit test whose
    alert must carry the whole link; then the same alert with the alerts
    file loaded alone (no rules): the link is the bare path.
    """
    shutil.copytree(PACK, tmp_path / "pack")
    rules_file = tmp_path / "pack" / "rules" / "watchtower.yml"
    text = rules_file.read_text()
    assert text.count('url: "http://localhost:3000"') == 1
    rules_file.write_text(text.replace('url: "http://localhost:3000"', 'url: "https://grafana.example.com/ops/"'))
    alert = next(rule for rule in alerts() if rule["alert"] == "WatchtowerWorkersCrashLooping")
    description = alert["annotations"]["description"].replace("{{ $value }}", "1")

    def case(rule_files: list[str], link: str) -> str:
        annotations = {
            "summary": "Workers of supervisor main are crash-looping",
            "description": description.replace("{{ $labels.supervisor }}", "main"),
            "dashboard": "/d/watchtower-workers?var-supervisor=main",
            "dashboard_url": link,
        }
        return yaml.safe_dump({
            "rule_files": rule_files,
            "evaluation_interval": "1m",
            "tests": [{
                "interval": "1m",
                "input_series": [{"series": 'watchtower_workers{supervisor="main",status="crashlooping"}',
                                  "values": "1x10"}],
                "alert_rule_test": [{"eval_time": "5m", "alertname": "WatchtowerWorkersCrashLooping",
                                     "exp_alerts": [{"exp_labels": {"severity": "page", "supervisor": "main"},
                                                     "exp_annotations": annotations}]}],
            }],
        })

    tests_dir = tmp_path / "pack" / "tests"
    path = shutil.which("promtool")
    assert path, "promtool is not installed: apt-get install prometheus"
    for name, files, link in [
        ("set.yml", ["../rules/watchtower.yml", "../alerts/watchtower.yml"],
         "https://grafana.example.com/ops/d/watchtower-workers?var-supervisor=main"),
        ("alone.yml", ["../alerts/watchtower.yml"], "/d/watchtower-workers?var-supervisor=main"),
        ("wrong.yml", ["../rules/watchtower.yml", "../alerts/watchtower.yml"],
         "http://localhost:3000/d/watchtower-workers?var-supervisor=main"),
    ]:
        (tests_dir / name).write_text(case(files, link))
        result = subprocess.run([path, "test", "rules", name], cwd=tests_dir, capture_output=True, text=True,
                                timeout=120)
        # The copy's address, not the shipped one: the last case must fail.
        assert (result.returncode == 0) == (name != "wrong.yml"), (name, result.stdout, result.stderr)
