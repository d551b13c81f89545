"""Whether the kernel's OOM killer ended a process: its memory cgroup's ``oom_kill`` count.

A process the OOM killer ends dies of SIGKILL, like one killed by hand; the
kernel log says which it was, but reading it takes privileges.  The kernel
also counts its kills per memory cgroup, in a file anyone may read:
``oom_kill N`` in ``memory.events`` (cgroup v2) or in ``memory.oom_control``
(cgroup v1, Linux 4.13 and later).  Workers live in their supervisor's
cgroup, so the supervisor reads that count when a worker dies of SIGKILL: if
it rose since the last look, the kernel killed something there for want of
memory, most likely the worker that just died.

Where no such file can be read (not Linux, no memory controller, a cgroup
path the container hides), :meth:`OomCounter.rose` is always False and a
worker killed by the OOM killer is reported as killed by SIGKILL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["OomCounter", "cgroup_oom_files"]

_ROOT = Path("/sys/fs/cgroup")


def cgroup_oom_files(proc_cgroup: str = "/proc/self/cgroup", root: Path = _ROOT) -> Iterator[Path]:
    """The files that may hold this process's memory cgroup's ``oom_kill`` count, likeliest first."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2 (or the unified part of a hybrid setup)
            for base in (root, root / "unified"):
                yield base / relative / "memory.events"
                yield base / "memory.events"
        elif "memory" in controllers.split(","):
            yield root / "memory" / relative / "memory.oom_control"
            yield root / "memory" / "memory.oom_control"


class OomCounter:
    """Tells whether the OOM killer struck in this process's memory cgroup since the last look.

    ``path``: the file to read (found with :func:`cgroup_oom_files` by default).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        if self.path is None:
            self.path = next((p for p in cgroup_oom_files() if _read(p) is not None), None)
        self._seen = _read(self.path) if self.path is not None else None

    def rose(self) -> bool:
        """Whether the count grew since the last call (or since this object was made)."""
        if self.path is None:
            return False
        count = _read(self.path)
        if count is None:
            return False
        grew = self._seen is not None and count > self._seen
        self._seen = count
        return grew


def _read(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "oom_kill":
            try:
                return int(value)
            except ValueError:
                return None
    return None
