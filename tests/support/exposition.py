"""Reading a Prometheus exposition: its samples, one value, promtool's verdict, a scrape over HTTP."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def parse(body: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    text = body.decode() if isinstance(body, bytes) else body
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def promtool_check(body: bytes) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y --no-install-recommends prometheus"
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    # promtool prints lint problems and still exits 0 for some of them.
    assert not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr).decode()


def scrape(url: str) -> tuple[bytes, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        body = response.read()
    return body, parse(body)
