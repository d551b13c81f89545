"""The README's recipes for mounting the API in a host app, run as written.

A recipe is the ``python`` block right after a ``<!-- host recipe: NAME -->``
line; the host apps beside this module run theirs in their own namespace,
where ``app`` or ``urlpatterns`` is the host's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = re.compile(r"^<!-- host recipe: (\S+) -->\n```python\n(.*?)^```$", re.M | re.S)


def recipes() -> dict[str, str]:
    """Every marked recipe of the README, by name."""
    return {name: code for name, code in MARKER.findall(README.read_text())}


def run_recipe(name: str, namespace: dict[str, Any]) -> None:
    """Run the README's recipe ``name`` in ``namespace`` (a host module's globals)."""
    code = recipes()[name]
    exec(compile(code, f"README.md, host recipe {name}", "exec"), namespace)
