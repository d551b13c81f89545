"""Every benchmark in one run, as one Markdown report.

    python3 benchmarks/run.py                 # all parts, full size (25 to 35 minutes on a 2-core machine)
    python3 benchmarks/run.py --quick         # all parts, small sizes (a smoke run)
    python3 benchmarks/run.py --only supervisor,scrape
    python3 benchmarks/run.py --write         # also replace benchmarks/RESULTS.md

Each part is one or two of the scripts beside this file, run as child
processes (one process tree, one after the other); their Markdown output is
copied into the report under a heading.  The report starts with the date, the
machine and the versions it ran with, then a table of every budget
against what this run measured (read from the parts' tables).
When both ``api`` and ``collector`` run, one fill of each ledger serves both
(api.py ``--collector-runs``).  ``--write`` keeps what RESULTS.md says below
its notes line (what was changed and what it bought).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTES = "<!-- notes: everything below this line is kept by run.py --write -->"

# name -> (what it measures and its budget, full arguments, quick arguments)
PARTS: dict[str, tuple[str, list[str], list[str]]] = {
    "throughput": (
        "1. Enqueue and drain rates against bare Dramatiq (budget: at least 0.90 of bare on both sides)",
        ["--messages", "20000", "--rounds", "7"],
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
    "console": (
        "2c. The console's pages at 10k and 1M job rows (budget: the API's, under 50 ms, 1M/10k at most 1.5)",
        ["--runs", "30"],
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
        ["--processes", "4", "--dead", "10", "--runs", "5"],
    ),
    "rescue": (
        "7. kill -9 to the killed worker's jobs running again, brokers at their defaults (budget: within 5 s)",
        # Without the bare round: the broker's own redelivery takes minutes (rescue.py --bare-rounds 1).
        ["--rounds", "5", "--bare-rounds", "0"],
        ["--rounds", "1", "--bare-rounds", "0"],
    ),
    "storm": (
        "8. A storm of failing jobs: drain rate against bare Dramatiq (budget: at least 0.90 of bare)",
        ["--messages", "3000", "--rounds", "5"],
        ["--messages", "300", "--rounds", "1", "--variants", "bare,sqlite", "--retries", "0"],
    ),
}
# Parts measured by a second script too: a real supervisor's /metrics.
MORE: dict[str, tuple[str, list[str], list[str]]] = {
    "scrape": ("scrape_pool", [], ["--processes", "4", "--runs", "5"]),
}


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables in ``text``: rows of cells, header first, separator rows dropped."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def number(cell: str, which: int = 0) -> float:
    """The ``which``-th number in a cell ("1.2 / 3.4" -> 1.2 or 3.4)."""
    return float(re.findall(r"\d[\d,]*\.?\d*", cell)[which].replace(",", ""))


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def budgets(name: str, output: str) -> list[tuple[str, str, str]]:
    """(budget, measured, met) rows that a part's output shows."""
    found = tables(output)
    rows: list[tuple[str, str, str]] = []
    if name == "throughput" and found:
        for cells in found[0][1:]:
            if cells[0] != "bare":
                for side, column in (("enqueue", 2), ("drain", 4)):
                    ratio = float(cells[column])
                    rows.append((f"{cells[0]} {side} rate ≥ 0.90 of bare", f"{ratio:.2f}", met(ratio >= 0.90)))
    elif name in ("api", "collector", "console") and found:
        table = found[0]
        if name == "console":  # the bulk retry's count is shown for what it costs, outside the lists' budget
            table = [cells for cells in table if not cells[0].startswith("bulk retry count")]
        large = table[0][3].split(" rows")[0]
        for cells in table[1:]:
            p50, ratio = number(cells[3]), float(cells[4])
            if p50 >= 50:
                rows.append((f"{cells[0]} ({cells[1]}) under 50 ms at {large} rows", f"{p50:.1f} ms", met(False)))
        slowest = max(table[1:], key=lambda cells: number(cells[3]))
        rows.append((f"every p50 under 50 ms at {large} rows",
                     f"slowest {number(slowest[3]):.1f} ms ({slowest[0]}, {slowest[1]})",
                     met(all(number(cells[3]) < 50 for cells in table[1:]))))
        over = [cells for cells in table[1:] if float(cells[4]) > 1.5]
        rows.append(("every large/small p50 ratio ≤ 1.5",
                     "; ".join(f"{c[0]} ({c[1]}) {float(c[4]):.2f} at {number(c[3]):.2f} ms" for c in over) or "all",
                     met(not over)))
    elif name == "prune" and found:
        write_column = found[0][0].index("longest recorder write (s)")
        for cells in found[0][1:]:
            seconds, worst_write = number(cells[1]), number(cells[write_column], -1)
            rows.append((f"{cells[0]}: 1M rows pruned in under 10 s", f"{seconds:.1f} s", met(seconds < 10)))
            rows.append((f"{cells[0]}: no recorder write over 0.5 s meanwhile", f"{worst_write:.3f} s (worst round)",
                         met(worst_write < 0.5)))
    elif name == "supervisor" and found:
        for cells in found[0][1:]:
            worst = float(cells[2])
            rows.append((f"{cells[0]} within 2 s", f"median {float(cells[1]):.2f} s, max {worst:.2f} s",
                         met(worst < 2)))
    elif name == "rescue" and found:
        for cells in found[0][1:]:
            if "supervised" in cells[0]:
                worst = float(cells[2])
                rows.append((f"{cells[0]}: jobs of a killed worker running again within 5 s",
                             f"median {float(cells[1]):.2f} s, max {worst:.2f} s", met(worst < 5)))
    elif name == "storm" and found:
        for cells in found[0][1:]:
            if cells[1] != "bare":
                ratio = float(cells[4])
                group = "throws" if cells[0] == "throws" else f"max_retries={cells[0]}"
                rows.append((f"{cells[1]} drain rate ({group}) ≥ 0.90 of bare", f"{ratio:.2f}", met(ratio >= 0.90)))
    elif name == "scrape":
        for table in found:
            for cells in table[1:]:
                if len(cells) >= 3 and re.match(r"[\d.]+$", cells[2]):
                    p95 = float(cells[2])
                    rows.append((f"/metrics scrape under 100 ms: {cells[0]}", f"p50 {float(cells[1]):.1f} ms, "
                                 f"p95 {p95:.1f} ms", met(p95 < 100)))
    return rows


def header(command: str) -> str:
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("dramatiq", "peewee", "prometheus-client", "falcon", "redis", "psycopg", "PyMySQL")
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"# Benchmark results\n\n"
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n"
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
    if args.write and (args.quick or set(names) != set(PARTS)):
        parser.error("--write keeps one whole full-size run in RESULTS.md: drop --only and --quick")

    command = ("python3 benchmarks/run.py " + " ".join(sys.argv[1:])).strip()
    sections = [header(command)]
    print(sections[0], flush=True)
    measured: list[tuple[str, str, str]] = []
    failed = []
    shared = "api" in names and "collector" in names
    collected = ""  # the collector's table when api.py measured it on its own ledgers
    for name in names:
        title, full, quick = PARTS[name]
        arguments = list(quick if args.quick else full)
        scripts = [(name, arguments)]
        if name == "api" and shared:
            arguments += ["--collector-runs", "3" if args.quick else "50"]
        if name in MORE:
            more, more_full, more_quick = MORE[name]
            scripts.append((more, list(more_quick if args.quick else more_full)))
        if name == "collector" and shared:
            output = collected
            body = (f"Measured on the ledgers of part 2a (`benchmarks/api.py --collector-runs`, one fill for both; "
                    f"benchmarks/collector.py fills and times the same way on its own):\n\n{collected}")
            measured.extend((f"{title.split('. ')[0]} {name}: {b}", m, ok) for b, m, ok in budgets(name, output))
            sections.append(f"## {title}\n\n{body}\n")
            print(sections[-1], flush=True)
            continue
        started = time.monotonic()
        bodies = []
        for script, script_args in scripts:
            print(f"$ python3 benchmarks/{script}.py {' '.join(script_args)}", file=sys.stderr, flush=True)
            child = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *script_args],
                                   stdout=subprocess.PIPE, text=True)
            if child.returncode != 0:
                failed.append(name)
                bodies.append(f"`{script}.py` FAILED (exit {child.returncode}); its output is above on stderr")
                continue
            output = child.stdout.strip()
            if name == "api" and shared:
                # api.py printed the collector's table after its own: it belongs to part 2b.
                cut = output.index("| method |")
                output, collected = output[:cut].strip(), output[cut:].strip()
            bodies.append(f"`python3 benchmarks/{script}.py {' '.join(script_args)}`\n\n{output}")
            measured.extend((f"{title.split('. ')[0]} {name}: {b}", m, ok) for b, m, ok in budgets(name, output))
        took = time.monotonic() - started
        section = f"## {title}\n\n({took:.0f} s, load average after {load()})\n\n" + "\n\n".join(bodies) + "\n"
        sections.append(section)
        print(section, flush=True)
    summary = ("## Budgets against this run\n\n| budget | measured | met |\n|---|---|---|\n"
               + "".join(f"| {b} | {m} | {ok} |\n" for b, m, ok in measured))
    print(summary, flush=True)
    report = "\n".join([sections[0], summary, *sections[1:]])
    if args.write:
        path = HERE / "RESULTS.md"
        old = path.read_text() if path.exists() else ""
        notes = old.split(NOTES, 1)[1] if NOTES in old else "\n"
        path.write_text(report + "\n" + NOTES + notes)
        print(f"wrote {path}", file=sys.stderr)
    if failed:
        raise SystemExit(f"parts failed: {', '.join(failed)}")


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
