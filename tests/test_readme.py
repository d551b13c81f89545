"""The README documents every setting, under its one spelling and environment variable."""

from __future__ import annotations

from conftest import ROOT

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
