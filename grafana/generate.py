#!/usr/bin/env python3
"""Generate Watchtower's Grafana dashboards: ``python3 grafana/generate.py [--check]``.

Writes ``grafana/dashboards/watchtower-{overview,queues,workers,failures}.json``
(the committed output; ``--check`` only says whether they are up to date).
Edit this file, not the JSON.

The coloured thresholds of the panels are read from the Prometheus pack
(the objectives of prometheus/rules/watchtower.yml, the burn-rate factors of
prometheus/alerts/watchtower.yml), so that they stay in one place: after
changing those, run this script again (a test says when the JSON is stale).

Every dashboard has a ``datasource`` variable (any Prometheus), ``job`` and
``queue`` variables (the workers dashboard also ``supervisor``), links to the
others that keep the variables, and panels whose queries filter on those
variables, use ``$__rate_interval`` for rates, and carry a unit and a
description.  The uids are the ones the alerts' ``dashboard`` annotations
name (``/d/watchtower-queues?var-queue=...``).

What the queries rely on (see README "Prometheus metrics"): job counters
are counted where the events happen (enqueues in the producers, the rest in
the workers, lost jobs and restarts in the supervisors), so they are summed
over every target; queue depths are the same from every supervisor, so they
take ``max``; ``watchtower_workers`` is scoped to each supervisor, so it is
summed.  Panels on recorded series (``watchtower:*``, the SLO objectives and
windows of prometheus/rules/watchtower.yml) aggregate over every job.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards"
PACK = HERE.parent / "prometheus"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: The selector of panels on job metrics: the chosen Prometheus jobs and queues.
JOBS = 'job=~"$job", queue=~"$queue"'
RATE = "[$__rate_interval]"
TAGS = ["watchtower", "dramatiq"]


# Building blocks ---------------------------------------------------------------------


def target(expr: str, legend: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "editorMode": "code", "expr": expr, "legendFormat": legend, "range": True}


def panel(
    title: str,
    description: str,
    unit: str,
    targets: list[dict[str, Any]],
    *,
    kind: str = "timeseries",
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    thresholds: list[tuple[str, float | None]] | None = None,
    threshold_lines: bool = False,
    minimum: float | None = 0,
    maximum: float | None = None,
) -> dict[str, Any]:
    """One panel; ``thresholds`` are (colour, from) steps, the first from None."""
    defaults: dict[str, Any] = {"unit": unit}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    steps = thresholds or [("green", None)]
    defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": color, "value": value} for color, value in steps]}
    if kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if stack else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if threshold_lines else "off"},
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:  # stat
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    for ref, entry in zip("ABCDEFGH", targets, strict=False):
        entry["refId"] = ref
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": height},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }


def query_variable(name: str, label: str, query: str, description: str) -> dict[str, Any]:
    """A multi-value variable from label values, "All" by default (any value: regex ``.*``)."""
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "StandardVariableQuery"},
        "refresh": 2,  # on time range change: new queues and supervisors show up
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
    }


def variables(*, supervisor: bool = False) -> list[dict[str, Any]]:
    found = [
        {
            "name": "datasource",
            "label": "Data source",
            "description": "The Prometheus that scrapes the Watchtower supervisors.",
            "type": "datasource",
            "query": "prometheus",
            "regex": "",
            "current": {},
            "options": [],
            "hide": 0,
            "refresh": 1,
        },
        query_variable("job", "Job", "label_values(watchtower_build_info, job)",
                       "Prometheus jobs that scrape Watchtower (supervisors, and producers that serve /metrics)."),
        query_variable("queue", "Queue", 'label_values(watchtower_queue_messages{job=~"$job"}, queue)',
                       "Dramatiq queues, as the supervisors read them from the broker."),
    ]
    if supervisor:
        found.append(query_variable("supervisor", "Supervisor",
                                    'label_values(watchtower_workers{job=~"$job"}, supervisor)',
                                    "Watchtower supervisors (the [supervisors.NAME] pools)."))
    return found


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Place panels left to right, top to bottom, on Grafana's 24-column grid; number them."""
    x = y = row_height = 0
    for number, item in enumerate(panels, start=1):
        grid = item["gridPos"]
        if x + grid["w"] > 24:
            x, y, row_height = 0, y + row_height, 0
        grid["x"], grid["y"] = x, y
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        item["id"] = number
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]], *,
              supervisor: bool = False) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,  # shared crosshair
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "links": [{
            "title": "Watchtower",
            "type": "dashboards",
            "tags": ["watchtower"],
            "asDropdown": False,
            "includeVars": True,
            "keepTime": True,
            "icon": "external link",
            "targetBlank": False,
            "tooltip": "",
            "url": "",
        }],
        "templating": {"list": variables(supervisor=supervisor)},
        "panels": layout(panels),
    }


def ratio(numerator: str, denominator: str) -> str:
    return f"({numerator})\n/\n({denominator})"


def rate(metric: str, by: str, selector: str = JOBS) -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{selector}}}{RATE}))"


def quantile(q: float, metric: str, by: str = "") -> str:
    grouping = ", ".join(filter(None, [by, "le"]))
    return f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{{{JOBS}}}{RATE})))"


def failure_ratio(by: str) -> str:
    failed = rate("watchtower_jobs_failed_total", by)
    finished = f"{rate('watchtower_jobs_completed_total', by)}\n+\n{failed}"
    return ratio(failed, finished)


@dataclass(frozen=True)
class Thresholds:
    """The pack's thresholds that panels show: objectives and alert thresholds, burn-rate factors."""

    failure_ratio: float  # WatchtowerJobFailureRatioHigh
    queue_wait_seconds: float  # the queue-wait SLO's threshold
    burn_fast: float  # the paging burn rates (1 h and 5 m windows; 6 h and 30 m)
    burn_slow: float


def read_thresholds() -> Thresholds:
    """The thresholds as the rule files hold them."""
    constants = {}
    for group in yaml.safe_load((PACK / "rules" / "watchtower.yml").read_text())["groups"]:
        for rule in group["rules"]:
            found = re.fullmatch(r"vector\((.+)\)", rule.get("expr", "").strip())
            if found:
                constants[rule["record"]] = float(found.group(1))
    factors = {}
    for group in yaml.safe_load((PACK / "alerts" / "watchtower.yml").read_text())["groups"]:
        for rule in group["rules"]:
            found = re.search(r"\(([\d.]+) \* \(1 - watchtower:slo_success_ratio:objective\)\)", rule["expr"])
            if found:
                factors[rule["alert"]] = float(found.group(1))
    return Thresholds(
        failure_ratio=constants["watchtower:job_failure_ratio:threshold"],
        queue_wait_seconds=constants["watchtower:slo_queue_wait_seconds:threshold"],
        burn_fast=factors["WatchtowerSuccessBudgetBurnFast"],
        burn_slow=factors["WatchtowerSuccessBudgetBurnSlow"],
    )


LIMITS = read_thresholds()
#: Failure ratio: orange from a fifth of the alert's threshold, red at it.
FAILURE_STEPS: list[tuple[str, float | None]] = [
    ("green", None), ("orange", LIMITS.failure_ratio / 5), ("red", LIMITS.failure_ratio)]
#: Burn rates: orange at the slow paging rate, red at the fast one.
BURN_STEPS: list[tuple[str, float | None]] = [("green", None), ("orange", LIMITS.burn_slow), ("red", LIMITS.burn_fast)]


# The dashboards ----------------------------------------------------------------------


def overview() -> dict[str, Any]:
    panels = [
        panel("Jobs completed", "Jobs that completed, per second, over the chosen jobs and queues.", "ops",
              [target(rate("watchtower_jobs_completed_total", ""), "completed")], kind="stat", width=6, height=4),
        panel("Failure ratio", "Jobs failed for good among jobs finished (completed + failed), over the chosen "
              "queues. Retried attempts are not failures.", "percentunit",
              [target(failure_ratio(""), "failed / finished")], kind="stat", width=6, height=4,
              thresholds=FAILURE_STEPS),
        panel("Queue wait p95", "95th percentile of the time jobs waited from ready (enqueued, or their eta) "
              "to started.", "s", [target(quantile(0.95, "watchtower_job_queue_wait_seconds"), "p95")],
              kind="stat", width=6, height=4, thresholds=[("green", None), ("orange", LIMITS.queue_wait_seconds / 3),
                                                      ("red", LIMITS.queue_wait_seconds)]),
        panel("Workers running", "Worker processes in status running, over every supervisor of the chosen jobs.",
              "short", [target('sum (watchtower_workers{job=~"$job", status="running"})', "running")],
              kind="stat", width=6, height=4, thresholds=[("red", None), ("green", 1)]),
        panel("Throughput", "Jobs per second: enqueued (counted by the producers that serve /metrics), "
              "attempts started, completed, retried and failed for good.", "ops", [
                  target(rate("watchtower_jobs_enqueued_total", ""), "enqueued"),
                  target(rate("watchtower_jobs_started_total", ""), "started"),
                  target(rate("watchtower_jobs_completed_total", ""), "completed"),
                  target(rate("watchtower_jobs_retried_total", ""), "retried"),
                  target(rate("watchtower_jobs_failed_total", ""), "failed"),
              ]),
        panel("Failure ratio by queue", "Jobs failed for good among jobs finished, per queue; the dashed "
              "lines are the success SLO's error budget (1 - objective) and the WatchtowerJobFailureRatioHigh "
              "threshold, both from the recording rules' watchtower-objectives group.", "percentunit", [
                  target(failure_ratio("queue"), "{{queue}}"),
                  target("1 - watchtower:slo_success_ratio:objective", "error budget (1 - objective)"),
                  target("watchtower:job_failure_ratio:threshold", "alert threshold"),
              ]),
        panel("Queue wait", "How long jobs waited from ready (enqueued, or their eta) to started: "
              "50th, 95th and 99th percentiles over the chosen queues.", "s", [
                  target(quantile(0.5, "watchtower_job_queue_wait_seconds"), "p50"),
                  target(quantile(0.95, "watchtower_job_queue_wait_seconds"), "p95"),
                  target(quantile(0.99, "watchtower_job_queue_wait_seconds"), "p99"),
              ]),
        panel("Job duration", "How long attempts ran: 50th, 95th and 99th percentiles over the chosen queues.",
              "s", [
                  target(quantile(0.5, "watchtower_job_duration_seconds"), "p50"),
                  target(quantile(0.95, "watchtower_job_duration_seconds"), "p95"),
                  target(quantile(0.99, "watchtower_job_duration_seconds"), "p99"),
              ]),
        panel("Jobs in progress", "Attempts running now, per queue.", "short",
              [target(f"sum by (queue) (watchtower_jobs_in_progress{{{JOBS}}})", "{{queue}}")], stack=True),
        panel("Workers by status", "Worker processes by status, over every supervisor of the chosen jobs "
              "(crashlooping: dying right after start; stopped and lost, in the last hour: lost died or went silent).",
              "short",
              [target('sum by (status) (watchtower_workers{job=~"$job"})', "{{status}}")], stack=True),
        panel("Ledger events", "The job ledger's recorder in the workers and producers: events written and "
              "events dropped (memory and the spool were full while the ledger database was slow or away), "
              "per second.",
              "ops", [
                  target('sum (rate(watchtower_recorder_events_written_total{job=~"$job"}' + RATE + "))", "written"),
                  target('sum (rate(watchtower_recorder_events_dropped_total{job=~"$job"}' + RATE + "))", "dropped"),
              ]),
        panel("Ledger buffer", "Ledger events waiting to be written: in the recorders' memory, and in their "
              "spool files on local disk, which grow while the ledger database is away; past recorder.spool_bytes "
              "events are dropped.", "short",
              [target('sum (watchtower_recorder_events_buffered{job=~"$job"})', "buffered"),
               target('sum (watchtower_recorder_events_spooled{job=~"$job"})', "spooled")], width=6),
        panel("Ledger batch write time", "95th percentile of one batch write of the ledger (one transaction).",
              "s", [target('histogram_quantile(0.95, sum by (le) '
                           '(rate(watchtower_recorder_flush_duration_seconds_bucket'
                           '{job=~"$job"}' + RATE + ")))", "p95")], width=6),
        panel("Scrape targets up", "Targets of the chosen jobs that Prometheus scraped successfully "
              "(a supervisor down: WatchtowerExporterDown).", "short",
              [target('sum by (job) (up{job=~"$job"})', "{{job}} up"),
               target('count by (job) (up{job=~"$job"})', "{{job}} targets")]),
    ]
    return dashboard("watchtower-overview", "Watchtower / Overview",
                     "Is work flowing? Throughput, failures, waits, durations, workers and the ledger's health.",
                     panels)


def queues() -> dict[str, Any]:
    def depth(state: str) -> str:
        # Every supervisor reports the same broker counts: one of them.
        return f'max by (queue) (watchtower_queue_messages{{{JOBS}, state="{state}"}})'

    panels = [
        panel("Ready messages", "Messages waiting in each queue for a worker, as the broker counts them.",
              "short", [target(depth("ready"), "{{queue}}")]),
        panel("Delayed messages", "Messages waiting for their eta: delayed sends and retries waiting for their "
              "backoff (Redis; RabbitMQ cannot count them).", "short", [target(depth("delayed"), "{{queue}}")]),
        panel("Dead letters", "Messages dead-lettered in each queue (failed for good or skipped); the broker "
              "drops them after its dead_message_ttl.", "short", [target(depth("dead"), "{{queue}}")]),
        panel("Backlog trend", "Change of the ready messages per minute over the last 15 minutes "
              "(recorded series, all jobs): positive for long means WatchtowerBacklogGrowing.", "short",
              [target('deriv(watchtower:queue_messages:max{queue=~"$queue", state="ready"}[15m]) * 60',
                      "{{queue}}")], minimum=None),
        panel("Queue wait p95 by queue", "95th percentile of the time jobs waited from ready to started, per "
              "queue; the dashed line is the queue-wait SLO's threshold.", "s", [
                  target(quantile(0.95, "watchtower_job_queue_wait_seconds", "queue"), "{{queue}}"),
                  target("watchtower:slo_queue_wait_seconds:threshold", "SLO threshold"),
              ]),
        panel("Queue wait p50 by queue", "Median time jobs waited from ready to started, per queue.", "s",
              [target(quantile(0.5, "watchtower_job_queue_wait_seconds", "queue"), "{{queue}}")]),
        panel("Jobs that waited too long", "Share of the jobs started in the last 5 minutes that waited longer "
              "than the queue-wait SLO's threshold (recorded series, all jobs), and the error budget "
              "(1 - objective).", "percentunit", [
                  target('watchtower:job_queue_wait_slow_ratio:rate5m{queue=~"$queue"}', "{{queue}}"),
                  target("1 - watchtower:slo_queue_wait_ratio:objective", "error budget (1 - objective)"),
              ]),
        panel("Queue-wait SLO burn rate", "How fast each queue spends the queue-wait error budget (1 = exactly "
              "as the objective allows) over 1 hour and 5 minutes; WatchtowerQueueWaitBudgetBurnFast pages "
              f"when both are above {LIMITS.burn_fast:g} (the red line), the slow alert at {LIMITS.burn_slow:g} "
              "(over 6 hours and 30 minutes).", "suffix:x", [
                  target(burn("job_queue_wait_slow_ratio", "rate1h", "slo_queue_wait_ratio"), "{{queue}} 1h"),
                  target(burn("job_queue_wait_slow_ratio", "rate5m", "slo_queue_wait_ratio"), "{{queue}} 5m"),
              ], thresholds=BURN_STEPS, threshold_lines=True),
        panel("Enqueued by queue", "Messages sent per second, per queue (counted by the producers that serve "
              "/metrics).", "ops", [target(rate("watchtower_jobs_enqueued_total", "queue"), "{{queue}}")]),
        panel("Started by queue", "Attempts started per second, per queue.", "ops",
              [target(rate("watchtower_jobs_started_total", "queue"), "{{queue}}")]),
        panel("Completed by queue", "Jobs completed per second, per queue.", "ops",
              [target(rate("watchtower_jobs_completed_total", "queue"), "{{queue}}")]),
        panel("Failed by queue", "Jobs failed for good per second, per queue (retries exhausted, throws, "
              "dead-lettered).", "ops", [target(rate("watchtower_jobs_failed_total", "queue"), "{{queue}}")]),
    ]
    return dashboard("watchtower-queues", "Watchtower / Queues",
                     "Where does work wait? Depths by state, queue waits against the SLO, per-queue rates.", panels)


def burn(ratio_name: str, window: str, objective: str) -> str:
    return (f'watchtower:{ratio_name}:{window}{{queue=~"$queue"}}\n'
            f"/ on () group_left ()\n(1 - watchtower:{objective}:objective)")


def workers() -> dict[str, Any]:
    sup = 'job=~"$job", supervisor=~"$supervisor"'
    panels = [
        panel("Workers by status", "Worker processes by status, over the chosen supervisors (the ledger's "
              "workers table, each supervisor counting its own; stopped and lost: those of the last hour).", "short",
              [target(f"sum by (status) (watchtower_workers{{{sup}}})", "{{status}}")], stack=True),
        panel("Running workers by supervisor", "Worker processes in status running, per supervisor.", "short",
              [target(f'sum by (supervisor) (watchtower_workers{{{sup}, status="running"}})', "{{supervisor}}")]),
        panel("Crash-looping workers", "Worker slots whose processes keep dying within 10 s of their start; "
              "the supervisor restarts them after a growing wait (WatchtowerWorkersCrashLooping).", "short",
              [target(f'sum by (supervisor) (watchtower_workers{{{sup}, status="crashlooping"}})',
                      "{{supervisor}}")], thresholds=[("green", None), ("red", 1)], threshold_lines=True),
        panel("Restarts by reason", "Worker processes restarted by their supervisor, per minute, by reason "
              "(exit, crash, killed, hung, memory).", "opm",
              [target(f"sum by (supervisor, reason) (rate(watchtower_worker_restarts_total{{{sup}}}{RATE})) * 60",
                      "{{supervisor}} {{reason}}")], stack=True),
        panel("Resident memory by supervisor", "Resident memory of the live worker processes, added up, per "
              "supervisor.", "bytes",
              [target(f"sum by (supervisor) (watchtower_worker_resident_memory_bytes{{{sup}}})", "{{supervisor}}")]),
        panel("Memory per running worker", "Resident memory per running worker process, per supervisor: a "
              "steady climb is a leak (the pool's memory limit recycles the worker).", "bytes",
              [target(f"sum by (supervisor) (watchtower_worker_resident_memory_bytes{{{sup}}})\n/\n"
                      f'sum by (supervisor) (watchtower_workers{{{sup}, status="running"}})', "{{supervisor}}")]),
        panel("Lost and stopped workers", "Worker processes that died or went silent (lost) and that stopped "
              "in the last hour, per supervisor.", "short",
              [target(f'sum by (supervisor, status) (watchtower_workers{{{sup}, status=~"lost|stopped"}})',
                      "{{supervisor}} {{status}}")]),
        panel("Jobs in progress by queue", "Attempts running now, per queue, over every worker of the chosen "
              "jobs.", "short", [target(f"sum by (queue) (watchtower_jobs_in_progress{{{JOBS}}})", "{{queue}}")],
              stack=True),
    ]
    return dashboard("watchtower-workers", "Watchtower / Workers",
                     "Which workers are sick? Status by supervisor, restarts by reason, memory, crash loops.",
                     panels, supervisor=True)


def failures() -> dict[str, Any]:
    panels = [
        panel("Failed for good by actor", "Jobs failed for good per second (retries exhausted, throws, "
              "dead-lettered), per queue and actor.", "ops",
              [target(rate("watchtower_jobs_failed_total", "queue, actor"), "{{queue}} {{actor}}")]),
        panel("Failure ratio by actor", "Jobs failed for good among jobs finished, per queue and actor.",
              "percentunit", [target(failure_ratio("queue, actor"), "{{queue}} {{actor}}")],
              thresholds=FAILURE_STEPS, threshold_lines=True),
        panel("Retries by actor", "Attempts that raised and were scheduled to run again, per second.", "ops",
              [target(rate("watchtower_jobs_retried_total", "queue, actor"), "{{queue}} {{actor}}")]),
        panel("Lost attempts", "Attempts lost because their worker process died (the job went back to "
              "pending and the broker runs it again), per minute.", "opm",
              [target(f"{rate('watchtower_jobs_lost_total', 'queue, actor')} * 60", "{{queue}} {{actor}}")]),
        panel("Skipped by actor", "Jobs skipped by a middleware (AgeLimit: older than max_age), per second.",
              "ops", [target(rate("watchtower_jobs_skipped_total", "queue, actor"), "{{queue}} {{actor}}")]),
        panel("Dead letters", "Messages in each queue's dead-letter queue, as the broker counts them.", "short",
              [target(f'max by (queue) (watchtower_queue_messages{{{JOBS}, state="dead"}})', "{{queue}}")]),
        panel("Success ratio vs objective", "Jobs completed among jobs finished over the last hour, per queue "
              "(recorded series, all jobs), and the success SLO's objective.", "percentunit", [
                  target('1 - watchtower:job_failure_ratio:rate1h{queue=~"$queue"}', "{{queue}}"),
                  target("watchtower:slo_success_ratio:objective", "objective"),
              ], minimum=None, maximum=1),
        panel("Success SLO burn rate", "How fast each queue spends the success error budget (1 = exactly as the "
              "objective allows) over 1 hour and 5 minutes; WatchtowerSuccessBudgetBurnFast pages when both "
              f"are above {LIMITS.burn_fast:g} (the red line), the slow alert at {LIMITS.burn_slow:g} (over 6 hours "
              "and 30 minutes).", "suffix:x", [
                  target(burn("job_failure_ratio", "rate1h", "slo_success_ratio"), "{{queue}} 1h"),
                  target(burn("job_failure_ratio", "rate5m", "slo_success_ratio"), "{{queue}} 5m"),
              ], thresholds=BURN_STEPS, threshold_lines=True),
    ]
    return dashboard("watchtower-failures", "Watchtower / Failures",
                     "What fails? Final failures and retries by actor, lost attempts, skips, the success SLO.", panels)


DASHBOARDS = {"watchtower-overview": overview, "watchtower-queues": queues, "watchtower-workers": workers,
              "watchtower-failures": failures}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{uid}.json": json.dumps(build(), indent=2) + "\n" for uid, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    parser.add_argument("--out", type=Path, default=OUTPUT, help="directory to write (default grafana/dashboards)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python3 grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
