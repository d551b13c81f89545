"""The README documents every setting, under its one spelling and environment variable."""

from __future__ import annotations

from conftest import ROOT

from watchtower.config import KEYS, env_name


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in KEYS if f"| `{key}` | `{env_name(key)}` |" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"
