"""Every benchmark in one run, as one Markdown report.

    python3 benchmarks/run.py                 # all parts, full size (about 25 minutes)
    python3 benchmarks/run.py --quick         # all parts, small sizes (a smoke run)
    python3 benchmarks/run.py --only supervisor,scrape
    python3 benchmarks/run.py --write         # also replace benchmarks/RESULTS.md

Each part is one of the scripts beside this file, run as a child process (one
process tree); its Markdown output is copied into the report under a heading.
The report starts with the date, the machine and the versions it ran with.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (what it measures and its budget, full arguments, quick arguments)
PARTS: dict[str, tuple[str, list[str], list[str]]] = {
    "throughput": (
        "1. Enqueue and drain rates against bare Dramatiq (budget: at least 0.90 of bare on both sides)",
        ["--messages", "20000", "--rounds", "5"],
        ["--messages", "1000", "--rounds", "1", "--variants", "bare,sqlite"],
    ),
    "api": (
        "2a. The API's answer times at 10k and 1M job rows (budget: under 50 ms, 1M/10k at most 1.5)",
        ["--runs", "30"],
        ["--small", "1000", "--large", "5000", "--runs", "3", "--databases", "sqlite"],
    ),
    "collector": (
        "2b. MetricsCollector at 10k and 1M job rows (budget: under 50 ms, 1M/10k at most 1.5)",
        [],
        ["--small", "1000", "--large", "5000", "--runs", "3", "--databases", "sqlite"],
    ),
    "prune": (
        "3. Prune of 1M rows while a recorder writes (budget: under 10 s, no write stall over 0.5 s)",
        ["--rounds", "1"],
        ["--rows", "5000", "--keep", "1000", "--rounds", "1", "--databases", "sqlite"],
    ),
    "supervisor": (
        "4 and 6. kill -9 to replacement, commands to effect (budget: under 2 s), and memory",
        ["--rounds", "5"],
        ["--rounds", "1"],
    ),
    "scrape": (
        "5. /metrics scrape with 16 worker processes (budget: under 100 ms)",
        [],
        ["--processes", "4", "--runs", "5"],
    ),
}


def header(command: str) -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("dramatiq", "peewee", "prometheus-client", "falcon", "redis", "psycopg", "PyMySQL")
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"# Benchmark results\n\n"
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
        f"- machine: {os.cpu_count()} cores, {memory:.0f} GiB, {platform.platform()}, load average at start {load}\n"
        f"- Python {platform.python_version()}; {versions}\n"
        f"- command: `{command}`\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--only", default="", help="comma-separated parts: " + ", ".join(PARTS))
    parser.add_argument("--write", action="store_true", help="replace benchmarks/RESULTS.md with the report")
    args = parser.parse_args()

    names = [name.strip() for name in args.only.split(",") if name.strip()] or list(PARTS)
    unknown = [name for name in names if name not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")

    command = "python3 benchmarks/run.py " + " ".join(sys.argv[1:])
    sections = [header(command.strip())]
    failed = []
    for name in names:
        title, full, quick = PARTS[name]
        started = time.monotonic()
        child = subprocess.run(
            [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)],
            capture_output=True, text=True,
        )
        took = time.monotonic() - started
        if child.returncode != 0:
            failed.append(name)
            body = f"FAILED (exit {child.returncode}):\n\n```\n{child.stderr[-2000:]}\n```"
        else:
            body = child.stdout.strip()
        arguments = " ".join(quick if args.quick else full)
        section = f"## {title}\n\n`python3 benchmarks/{name}.py {arguments}` ({took:.0f} s)\n\n{body}\n"
        sections.append(section)
        print(section, flush=True)
    report = "\n".join(sections)
    if args.write:
        (HERE / "RESULTS.md").write_text(report)
    if failed:
        raise SystemExit(f"parts failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
