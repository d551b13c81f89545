"""The Prometheus pack under prometheus/, read as data, and promtool run in it."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from typing import Any

import yaml

from tests.support.checkout import ROOT

PACK = ROOT / "prometheus"
RULE_FILES = sorted((PACK / "rules").glob("*.yml")) + sorted((PACK / "alerts").glob("*.yml"))
#: The modules that define every exported metric name (see watchtower/metrics.py).
METRIC_MODULES = tuple(ROOT / "watchtower" / name for name in ("metrics.py", "scrape.py", "exposition.py"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in the pack's directory; a missing promtool fails the test."""
    path = shutil.which("promtool")
    assert path, "promtool is not installed: apt-get install prometheus (it brings promtool 2.42)"
    return subprocess.run([path, *args], cwd=PACK, capture_output=True, text=True, timeout=600)


def rules() -> list[dict[str, Any]]:
    """Every rule of every rule file of the pack."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def recorded() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def exported_metrics() -> set[str]:
    """The metric names the exporter defines: the name literals of its modules."""
    names = set()
    for module in METRIC_MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"watchtower_[a-z_]+", node.value):
                names.add(node.value)
    return names
