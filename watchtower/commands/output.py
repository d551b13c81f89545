"""How the commands print: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

__all__ = ["table", "age", "echo_json", "short"]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns (``None`` shows as ``-``)."""
    cells = [list(header)] + [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def age(value: datetime | str | None) -> str:
    """How long ago ``value`` was: ``12s ago``, ``5m ago``, ``3h ago`` (``-`` for None)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = max(0.0, (datetime.now(UTC) - value).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def short(text: str | None, width: int) -> str | None:
    """``text`` cut to ``width`` characters (with an ellipsis)."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def echo_json(value: Any) -> None:
    """Print ``value`` as one JSON document."""
    click.echo(json.dumps(value, ensure_ascii=False))
