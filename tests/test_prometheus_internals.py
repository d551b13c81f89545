"""Contract tests: each prometheus-client internal that watchtower.prometheus_internals names still holds.

One test per internal, named after it, against the installed
prometheus-client: metrics are written by real child processes in
multiprocess mode (the mode is fixed when the library is first imported, so
never in this process), and their files are read back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.checkout import subprocess_env
from watchtower import prometheus_internals as internals

# Run in a child with PROMETHEUS_MULTIPROC_DIR set: the library writes a few values; prints its pid.
_WRITER = """
import json, os, sys
from prometheus_client import Counter, Gauge, Histogram, values
assert values.ValueClass._multiprocess, "not in multiprocess mode"
counter = Counter("wt_probe", "A probe counter.", ["queue"], registry=None)
counter.labels("a").inc(3)
counter.labels("b").inc(0.5)
Gauge("wt_probe_live", "A probe gauge.", ["queue"], multiprocess_mode="livesum", registry=None).labels("a").set(7)
Gauge("wt_probe_max", "A max gauge.", (), multiprocess_mode="max", registry=None).set(4)
histogram = Histogram("wt_probe_seconds", "A probe histogram.", (), buckets=(0.005, 1.0), registry=None)
for value in (0.001, 0.5, 0.6, 30.0):
    histogram.observe(value)
print(json.dumps({"pid": os.getpid()}))
"""


def _write(directory: Path) -> dict[str, Any]:
    env = subprocess_env()
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    done = subprocess.run([sys.executable, "-c", _WRITER], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _values(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, labels): value} of one file, through the adapter."""
    values = {}
    for key, value, timestamp, _position in internals.read_file(path):
        _metric, name, labels, _help = internals.parse_key(key)
        values[(name, tuple(sorted(labels.items())))] = value
        assert isinstance(timestamp, float)
    return values


def test_multiprocess_file_names(tmp_path: Path) -> None:
    pid = _write(tmp_path)["pid"]
    names = {name for name in os.listdir(tmp_path) if name.endswith(".db")}
    assert names == {
        os.path.basename(internals.metric_file(tmp_path, "counter", pid)),
        os.path.basename(internals.metric_file(tmp_path, "gauge", pid, "livesum")),
        os.path.basename(internals.metric_file(tmp_path, "gauge", pid, "max")),
        os.path.basename(internals.metric_file(tmp_path, "histogram", pid)),
    }
    assert internals.file_kind(internals.metric_file(tmp_path, "counter", pid)) == ("counter", None)
    assert internals.file_kind(internals.metric_file(tmp_path, "gauge", pid, "livesum")) == ("gauge", "livesum")


def test_mmaped_dict_reads_a_counter_file_with_its_keys(tmp_path: Path) -> None:
    pid = _write(tmp_path)["pid"]
    file = internals.metric_file(tmp_path, "counter", pid)
    entries = list(internals.read_file(file))
    assert all(len(entry) == 4 for entry in entries)  # key, value, timestamp, position
    metric_names = {internals.parse_key(key)[0] for key, *_ in entries}
    helps = {internals.parse_key(key)[3] for key, *_ in entries}
    assert metric_names == {"wt_probe"} and helps == {"A probe counter."}
    values = _values(file)
    assert values[("wt_probe_total", (("queue", "a"),))] == 3.0
    assert values[("wt_probe_total", (("queue", "b"),))] == 0.5
    assert _values(internals.metric_file(tmp_path, "gauge", pid, "livesum")) == {
        ("wt_probe_live", (("queue", "a"),)): 7.0
    }


def test_histogram_file_holds_per_bucket_values_and_sum_without_count(tmp_path: Path) -> None:
    pid = _write(tmp_path)["pid"]
    values = _values(internals.metric_file(tmp_path, "histogram", pid))
    go = internals.go_float_formatter()
    buckets = {dict(labels)["le"]: value for (name, labels), value in values.items() if name.endswith("_bucket")}
    # One observation per bucket it fell in, not cumulative: 0.001 | 0.5, 0.6 | 30.
    assert buckets == {go(0.005): 1.0, go(1.0): 2.0, go(float("inf")): 1.0}
    assert values[("wt_probe_seconds_sum", ())] == 0.001 + 0.5 + 0.6 + 30.0
    assert not any(name.endswith("_count") for name, _ in values)


def test_mmaped_dict_writes_a_file_the_library_reads(tmp_path: Path) -> None:
    pid = _write(tmp_path)["pid"]
    written = internals.metric_file(tmp_path, "counter", pid)
    archive = internals.metric_file(tmp_path, "counter", "dead")
    internals.write_file(archive, [(key, value * 10) for key, value, _ts, _pos in internals.read_file(written)])
    assert _values(archive) == {key: value * 10 for key, value in _values(written).items()}
    os.remove(written)
    # The library's own reader sees the file that was written here.
    families = {family.name: family for family in internals.merge_files([archive])}
    samples = {(s.name, s.labels.get("queue")): s.value for s in families["wt_probe"].samples}
    assert samples == {("wt_probe_total", "a"): 30.0, ("wt_probe_total", "b"): 5.0}


def test_multiprocess_collector_merge_adds_up_files(tmp_path: Path) -> None:
    pids = [_write(tmp_path)["pid"] for _ in range(2)]
    families = {family.name: family for family in internals.merge_files(
        [internals.metric_file(tmp_path, "gauge", pid, "max") for pid in pids]
        + [internals.metric_file(tmp_path, "counter", pid) for pid in pids]
    )}
    assert [sample.value for sample in families["wt_probe_max"].samples] == [4.0]
    counted = {s.labels["queue"]: s.value for s in families["wt_probe"].samples if s.name == "wt_probe_total"}
    assert counted == {"a": 6.0, "b": 1.0}


def test_float_to_go_string() -> None:
    go = internals.go_float_formatter()
    assert [go(value) for value in (0.005, 1.0, 2.5, 3600.0, float("inf"))] == ["0.005", "1.0", "2.5", "3600.0", "+Inf"]


def test_value_key_and_open_value_file(tmp_path: Path) -> None:
    """A file written key by key as watchtower.instruments does: the library's reader gives the same values."""
    path = internals.metric_file(tmp_path, "counter", "watchtower-1")
    key = internals.value_key("wt_probe", "wt_probe_total", ["queue"], ["a"], "A probe counter.")
    assert internals.parse_key(key) == ("wt_probe", "wt_probe_total", {"queue": "a"}, "A probe counter.")
    file = internals.open_value_file(path)
    try:
        file.write_value(key, 1.0, 0.0)
        file.write_value(key, 4.5, 0.0)  # a value is rewritten in place
        # Readable while it is open, from another reader, as a scrape reads it.
        assert _values(path) == {("wt_probe_total", (("queue", "a"),)): 4.5}
    finally:
        file.close()
    families = {family.name: family for family in internals.merge_files([path])}
    assert [(s.name, s.labels, s.value) for s in families["wt_probe"].samples] == [
        ("wt_probe_total", {"queue": "a"}, 4.5)
    ]


def test_metric_files_and_file_process_name_every_file_the_library_writes(tmp_path: Path) -> None:
    pid = _write(tmp_path)["pid"]
    written = {os.path.basename(path) for path in internals.metric_files(tmp_path)}
    assert written == {
        f"counter_{pid}.db", f"histogram_{pid}.db", f"gauge_livesum_{pid}.db", f"gauge_max_{pid}.db",
    }
    assert {internals.file_process(path) for path in internals.metric_files(tmp_path)} == {str(pid)}
    assert internals.file_process(internals.metric_file(tmp_path, "gauge", "watchtower-7", "livesum")) == "watchtower-7"
    (tmp_path / "notes.txt").write_text("not a metric file")
    assert sorted(internals.scraped_files(tmp_path)) == sorted(internals.metric_files(tmp_path))


def test_mark_process_dead_removes_only_the_live_gauge_files(tmp_path: Path) -> None:
    pid = _write(tmp_path)["pid"]
    before = set(internals.metric_files(tmp_path))
    live = set(internals.live_gauge_files(tmp_path, pid))
    assert {os.path.basename(path) for path in live} == {f"gauge_livesum_{pid}.db"}
    internals.forget_live_gauges(pid, tmp_path)
    after = set(internals.metric_files(tmp_path))
    assert after == before - live
    assert {internals.file_kind(path)[0] for path in after} >= set(internals.KEPT_TYPES) - {"summary"}


def test_multiprocess_collector_reads_the_scraped_files_and_sums_the_summed_gauge_modes(tmp_path: Path) -> None:
    from prometheus_client.multiprocess import MultiProcessCollector

    for _ in range(2):
        _write(tmp_path)
    assert "livesum" in internals.SUMMED_GAUGE_MODES
    collected = {family.name: family for family in MultiProcessCollector(None, path=str(tmp_path)).collect()}
    merged = {family.name: family for family in internals.merge_files(internals.scraped_files(tmp_path))}
    def samples(families: dict[str, Any]) -> dict[str, list[Any]]:
        return {name: sorted((s.name, sorted(s.labels.items()), s.value) for s in family.samples)
                for name, family in families.items()}

    assert samples(collected) == samples(merged)
    assert [sample.value for sample in merged["wt_probe_live"].samples] == [14.0]  # 7 + 7


def test_new_family_with_samples_is_what_generate_latest_writes() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    family = internals.new_family("wt_probe", "A probe counter.", "counter")
    family.add_sample("wt_probe_total", {"queue": "a"}, 3.0)
    assert (family.name, family.documentation, family.type, family.unit) == ("wt_probe", "A probe counter.",
                                                                            "counter", "")
    assert [(s.name, s.labels, s.value) for s in family.samples] == [("wt_probe_total", {"queue": "a"}, 3.0)]

    class Collector:
        def collect(self) -> Any:
            yield family

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    assert generate_latest(registry).decode() == (
        '# HELP wt_probe_total A probe counter.\n# TYPE wt_probe_total counter\nwt_probe_total{queue="a"} 3.0\n'
    )
