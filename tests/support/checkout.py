"""This checkout: its root, and the environment of a child process that must import it."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that must import this checkout's watchtower.

    The root makes ``tests.support`` importable, tests/ the apps (``apps.basic``); no
    ``WATCHTOWER_*`` variable of the caller's leaks in.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHTOWER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def package_modules() -> dict[str, Path]:
    """Every module of the watchtower package by dotted name (packages by their own name), with its file."""
    package = ROOT / "watchtower"
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names
