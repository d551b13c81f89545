"""The benchmark runner runs a part and prints its table (a smoke test; no timings are judged)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.checkout import ROOT, subprocess_env


def test_the_runner_prints_a_filled_table_for_a_part() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "collector"],
        capture_output=True, text=True, timeout=300, env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "## 2b. MetricsCollector" in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| get_stats |")]
    assert rows, result.stdout
    assert re.search(r"\d+\.\d+ / \d+\.\d+", rows[0]), rows[0]
    # The budgets are set against what the part measured (numbers, not judged here).
    assert "| budget | measured | met |" in result.stdout
    assert re.search(r"^\| 2b collector: every p50 under 50 ms at 5,000 rows "
                     r"\| slowest \d+\.\d+ ms .*\| (yes|\*\*no\*\*) \|$",
                     result.stdout, re.M), result.stdout


def test_an_unknown_part_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "nosuch"],
        capture_output=True, text=True, timeout=60, env=subprocess_env(),
    )
    assert result.returncode == 2
    assert "unknown part(s) nosuch" in result.stderr


def test_write_refuses_a_partial_or_quick_run() -> None:
    """RESULTS.md keeps one whole run: --write with --only or --quick is refused before anything runs."""
    results = ROOT / "benchmarks" / "RESULTS.md"
    before = results.read_bytes()
    for extra in (["--only", "supervisor"], ["--quick"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--write", *extra],
            capture_output=True, text=True, timeout=60, env=subprocess_env(),
        )
        assert result.returncode == 2, result.stderr
        assert "--write keeps one whole full-size run" in result.stderr
    assert results.read_bytes() == before


def test_the_storm_part_drains_failing_jobs_into_a_complete_ledger() -> None:
    """Each ledger child checks that every failed row holds its traceback, so
    a run that prints its table had them all.
    """
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "storm"],
        capture_output=True, text=True, timeout=300, env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "## 8. A storm of failing jobs" in result.stdout
    assert re.search(r"^\| 0 \| sqlite \| \d+ \| \d+ \| \d+\.\d\d \| \d+ \| \d+ \| \d+\.\d\d \|$",
                     result.stdout, re.M), result.stdout
    assert re.search(r"^\| 8 storm: sqlite drain rate \(max_retries=0\) ≥ 0.90 of bare "
                     r"\| \d+\.\d\d \| (yes|\*\*no\*\*) \|$",
                     result.stdout, re.M), result.stdout
