"""What Grafana does to a dashboard's queries before they reach Prometheus, for the pack's tests.

There is no Grafana on these machines, so the tests replay its part:

- the built-in intervals, which Grafana's server fills in (Grafana 10 and
  later): ``$__interval`` is the time range over the panel's data points,
  rounded as Grafana rounds it (``roundInterval``) and at least the data
  source's ``timeInterval`` (the scrape interval), written as
  ``gtime.FormatInterval`` writes it; ``$__rate_interval`` is
  ``max($__interval + scrape interval, 4 x scrape interval)``, written as a Go
  duration (``time.Duration.String``: ``4s``, ``1m30s``); ``$__range`` is whole
  seconds (``3600s``);
- template variables (``$var``, ``${var}``, ``${var:raw}``, ``[[var]]``) as the
  Prometheus data source interpolates them (``interpolateQueryExpr``): a
  single-value variable is escaped for a PromQL string, a multi-value or
  "All"-capable one is regex-escaped, several values become ``(a|b)``, and
  "All" becomes the variable's ``allValue`` as it is (or every option);
- ``label_values(metric{selector}, label)`` variable queries, answered by the
  label-values API with ``match[]``.

Sources: Grafana's pkg/promlib/models/query.go (interpolateVariables,
calculateRateInterval), pkg/components/gtime, pkg/tsdb/intervalv2 and
public/app/plugins/datasource/prometheus (interpolateQueryExpr, escaping).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support.checkout import ROOT

DASHBOARDS = ROOT / "grafana" / "dashboards"
ALL = "$__all"


def dashboards() -> dict[str, dict[str, Any]]:
    """Every committed dashboard, by uid."""
    found = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        found[board["uid"]] = board
    return found


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel with queries (rows and their collapsed panels included)."""
    for item in board.get("panels", []):
        if item.get("type") == "row":
            yield from (p for p in item.get("panels", []) if p.get("targets"))
        elif item.get("targets"):
            yield item


def variables(board: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


# Intervals -------------------------------------------------------------------------

_ROUNDING_MS = [  # (below this many ms, round to this many ms), as rangeutil.roundInterval
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
    (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
    (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
    (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
    (32400000, 21600000), (86400000, 43200000), (604800000, 86400000), (1814400000, 604800000),
    (3628800000, 2592000000),
]


def round_interval_ms(interval_ms: float) -> int:
    for below, rounded in _ROUNDING_MS:
        if interval_ms < below:
            return rounded
    return 31536000000


def format_interval(seconds: float) -> str:
    """gtime.FormatInterval: the largest whole unit only (90 s is "1m")."""
    milliseconds = round(seconds * 1000)
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        if milliseconds >= size:
            return f"{milliseconds // size}{unit}"
    return "1ms"


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() for whole milliseconds: "500ms", "4s", "1m30s", "1h0m0s"."""
    milliseconds = round(seconds * 1000)
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


@dataclass(frozen=True)
class TimeRange:
    """A dashboard's time range and what Grafana derives from it for one panel."""

    start: float  # epoch seconds
    end: float
    scrape_interval: float  # the data source's timeInterval, seconds
    max_data_points: int = 1000  # about a panel's width in pixels

    @property
    def interval(self) -> float:
        """``$__interval`` in seconds: also the query step Grafana sends."""
        raw_ms = (self.end - self.start) * 1000 / self.max_data_points
        return max(round_interval_ms(raw_ms) / 1000, self.scrape_interval)

    @property
    def rate_interval(self) -> float:
        return max(self.interval + self.scrape_interval, 4 * self.scrape_interval)

    def builtins(self) -> dict[str, str]:
        span = self.end - self.start
        return {
            "__interval": format_interval(self.interval),
            "__interval_ms": str(int(self.interval * 1000)),
            "__rate_interval": go_duration(self.rate_interval),
            "__rate_interval_ms": str(int(self.rate_interval * 1000)),
            "__range": f"{round(span)}s",
            "__range_s": str(round(span)),
            "__range_ms": str(int(span * 1000)),
        }


# Variables ---------------------------------------------------------------------------


def regular_escape(value: str) -> str:
    """prometheusRegularEscape: a value inside a PromQL string."""
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def regex_escape(value: str) -> str:
    """prometheusSpecialRegexEscape: a value inside a PromQL regex string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def interpolate(variable: Mapping[str, Any], selected: Sequence[str], options: Sequence[str]) -> str:
    """The text Grafana puts in a Prometheus query for ``variable`` with ``selected`` values."""
    if list(selected) == [ALL]:
        if variable.get("allValue"):
            return str(variable["allValue"])
        selected = list(options)
    if not variable.get("multi") and not variable.get("includeAll"):
        [value] = selected
        return regular_escape(value)
    escaped = [regex_escape(value) for value in selected]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?::([^}]+))?\}")


def expand(text: str, values: Mapping[str, str]) -> str:
    """Replace every variable reference in ``text``; an unknown one is an error (Grafana would leave it)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(5)
        if fmt not in (None, "raw", "regex"):
            raise ValueError(f"format {fmt!r} of ${name} is not emulated")
        if name not in values:
            raise KeyError(f"${name} is neither a variable of the dashboard nor a built-in: {text!r}")
        return values[name]

    return _VARIABLE.sub(replace, text)


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<match>.+),\s*)?(?P<label>\w+)\s*\)\s*$", re.S)


def variable_query(variable: Mapping[str, Any]) -> str:
    query = variable.get("query")
    return str(query["query"] if isinstance(query, Mapping) else query)


def parse_label_values(query: str) -> tuple[str | None, str]:
    """``label_values(metric{...}, label)`` -> (the series selector or None, the label)."""
    found = _LABEL_VALUES.match(query)
    if not found:
        raise ValueError(f"not a label_values() query: {query!r}")
    return found.group("match"), found.group("label")
