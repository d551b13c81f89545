"""The README documents every setting, under its one spelling and environment variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.checkout import ROOT, subprocess_env
from watchtower.config import KEYS, env_name


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in KEYS if f"| `{key}` | `{env_name(key)}` |" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"


def test_the_mount_recipes_are_the_ones_the_host_apps_run() -> None:
    # The host apps of tests/test_web_host_auth.py run the marked blocks as
    # written; an unmarked block here would be a recipe that nothing runs.
    from apps.readme_recipes import recipes

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**In your web app.**"):readme.index("**At a terminal.**")]
    assert section.count("```python") == len(recipes()) == 3
    run = {name for name in recipes()
           for host in (ROOT / "tests" / "apps").glob("host_*.py") if f'run_recipe("{name}"' in host.read_text()}
    assert run == set(recipes()) == {"flask", "django", "starlette"}


def test_the_ledger_example_prints_rows_not_sql(tmp_path: Path) -> None:
    """The README's Python block runs as written against a real SQLite ledger, and prints what its comments say."""
    from watchtower import store
    from watchtower.clock import day_of, now_ms
    from watchtower.models import Job, Worker
    from watchtower.statuses import JobStatus, WorkerStatus

    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("<!-- ledger example -->"):].split("```python\n", 1)[1].split("```", 1)[0]
    db = store.connect(f"sqlite:///{tmp_path / 'watchtower.db'}")
    now = now_ms()
    Worker.insert(worker_id="host-1-default-1-3f2a1c", supervisor="default", hostname="host-1", pid=4242,
                  status=WorkerStatus.RUNNING, started_at=now - 60_000, last_heartbeat=now).execute()
    for number in range(12):
        failed = number == 11
        Job.insert(
            message_id=f"0b1c5f4e-0000-0000-0000-{number:012d}", queue="emails", actor="send_welcome",
            status=JobStatus.FAILED if failed else JobStatus.COMPLETED, attempts=3 if failed else 1,
            queued_at=now - 1000, queued_day=day_of(now - 1000), started_at=now - 512, completed_at=now - 500,
            worker_id="host-1-default-1-3f2a1c",
            exception="Traceback (most recent call last):\n  ...\nValueError: no such user" if failed else None,
        ).execute()
    db.close()

    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Job 0b1c5f4e-0000-0000-0000-000000000011 send_welcome (queue emails): failed",
        "12",
        "3 0.012 Worker host-1-default-1-3f2a1c on host-1 (default): running",
        "ValueError: no such user",
        "[<Worker host-1-default-1-3f2a1c host='host-1' supervisor='default' pid=4242 status=running>]",
        "0",
    ]
