"""Retention: deleting old job records, rollups and worker records in short batches.

One concern per module:

- :mod:`~watchtower.retention.policy`: what is old enough to go
  (:class:`Retention`), and counting it (:func:`plan`);
- :mod:`~watchtower.retention.engine`: deleting it in short, timed
  transactions (:func:`prune`);
- :mod:`~watchtower.retention.space`: handing SQLite's freed pages back to
  the file system afterwards;
- :mod:`~watchtower.retention.auto`: the automatic prune, one process at a
  time across hosts (:func:`prune_if_due`, :class:`AutoPruner`).
"""

from __future__ import annotations

from .auto import AutoPruner, prune_if_due
from .engine import prune
from .policy import PruneResult, Retention, plan

__all__ = ["Retention", "PruneResult", "prune", "plan", "prune_if_due", "AutoPruner"]
