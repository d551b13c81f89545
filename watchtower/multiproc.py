"""prometheus-client's multiprocess directory, kept right for a supervisor's lifetime.

- :func:`prepare_multiprocess_dir` / :func:`open_multiprocess_dir`: at
  supervisor start, create the directory, lock it (two supervisors must not
  share one) and delete the files of an earlier run;
- :func:`mark_process_dead`: for every child that exits, however it died.
  The dead process's live gauges go (prometheus-client's own
  ``mark_process_dead``), and its counters and histograms are folded into
  one archive file per type (``counter_dead.db``...).  Without the folding,
  a supervisor that recycles workers (memory limit) keeps a file per worker
  it ever ran, and every scrape reads them all: thousands of files after a
  few days;
- :func:`read_metrics`: the merged metric families of every file, for a
  scrape.  It holds a shared ``flock`` on ``.watchtower.scrape.lock`` while
  it reads, against the exclusive one the folding takes, so that a scrape
  never sees a dead process's values both in its own file and in the
  archive (nor in neither); the lock works across processes too (a
  ``watchtower serve`` reading a supervisor's directory).  It gives what
  prometheus-client's ``MultiProcessCollector`` gives, about four times
  faster for the file types Watchtower writes (counters, histograms,
  summaries, ``sum``/``livesum`` gauges: one running total per key over all
  files, each key's JSON parsed once per process instead of once per file
  and scrape); gauges of other modes (``all``, ``max``..., which a user's
  own metrics may use) go through the library's merge.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import prometheus_internals as internals
from .errors import MetricsDirInUse, MetricsError
from .instruments import FILE_OWNER, file_owner

if TYPE_CHECKING:
    from .config import Settings

__all__ = [
    "MULTIPROC_ENV",
    "MultiprocessDir",
    "WATCHTOWER_DIR_ENV",
    "families",
    "file_pid",
    "fold_dead_processes",
    "mark_process_dead",
    "multiprocess_dir",
    "open_multiprocess_dir",
    "prepare_multiprocess_dir",
    "read_metrics",
]

logger = logging.getLogger(__name__)

#: The environment variable prometheus-client reads for its directory.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The setting ``metrics_dir`` in the environment: where Watchtower's own values go.
WATCHTOWER_DIR_ENV = "WATCHTOWER_METRICS_DIR"

_ARCHIVE = "dead"  # counter_dead.db: the folded values of every dead process
_SCRAPE_LOCK = ".watchtower.scrape.lock"


@dataclass
class MultiprocessDir:
    """A multiprocess directory this process owns (wiped, locked) until :meth:`release`."""

    path: Path
    _lock_fd: int | None = None
    _remove: bool = False

    def __fspath__(self) -> str:
        return str(self.path)

    def env(self) -> dict[str, str]:
        """What to add to a child process's environment so that it writes here.

        ``metrics_dir`` for Watchtower's own values (fixed when the child's
        middleware is made, whatever the app does later), and
        ``PROMETHEUS_MULTIPROC_DIR`` for the app's own prometheus-client
        metrics, served beside them unless something in the app points the
        variable elsewhere (as Dramatiq's Prometheus middleware does).
        """
        return {WATCHTOWER_DIR_ENV: str(self.path), MULTIPROC_ENV: str(self.path)}

    def release(self) -> None:
        """Give up the lock (the supervisor is exiting).

        The files stay, except in a temporary directory that
        :func:`open_multiprocess_dir` made: that one is removed.
        """
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._remove:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove = False


_LOCK_NAME = ".watchtower.lock"


def prepare_multiprocess_dir(path: str | os.PathLike[str]) -> MultiprocessDir:
    """Create ``path`` if needed, lock it for this process, and delete old metric files.

    Call it once when the supervisor starts, before it starts any worker
    (give each child ``.env()``).  Only metric files are deleted, so pointing
    ``metrics_dir`` at a shared directory by mistake cannot delete anything
    else, and not those of processes that still run (producers that write
    here: their counters go on).  Raises MetricsDirInUse if another live
    process (another supervisor) holds the directory: two supervisors must
    not share one, or each would wipe and count the other's files.
    """
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise MetricsError(f"cannot use metrics_dir {str(directory)!r}: {error.strerror}") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise MetricsDirInUse(
            f"metrics_dir {str(directory)!r} is in use by another process (pid {owner}): "
            "give each supervisor a directory of its own (setting metrics_dir, WATCHTOWER_METRICS_DIR)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    removed = kept = 0
    for file in internals.metric_files(directory):
        pid = file_pid(file)
        if pid is not None and _alive(pid):
            kept += 1  # a producer that writes here (see fold_dead_processes) and still runs
            continue
        os.remove(file)
        removed += 1
    if removed:
        logger.info("removed %d metric files left in %s by an earlier run", removed, directory)
    if kept:
        logger.info("kept %d metric files of processes that still run and write to %s", kept, directory)
    return MultiprocessDir(directory, fd)


def file_pid(path: str) -> int | None:
    """The process whose values a metric file holds; None for an archive of dead ones (``counter_dead.db``)."""
    owner = internals.file_process(path).removeprefix(FILE_OWNER + "-")
    return int(owner) if owner.isdigit() else None


def fold_dead_processes(directory: str | os.PathLike[str], *, skip: Collection[int] = ()) -> int:
    """:func:`mark_process_dead` for every process that wrote here and has exited; how many there were.

    A supervisor calls it in its housekeeping for the processes that are not
    its children: producers on its host (web servers' workers, cron scripts)
    that share its ``metrics_dir``.  Their counters stay, folded into the
    archive, so that a short-lived process's enqueues are counted and its
    files do not pile up.  ``skip``: pids the caller marks itself.
    """
    pids = {pid for file in internals.metric_files(directory) if (pid := file_pid(file)) is not None} - set(skip)
    dead = [pid for pid in pids if not _alive(pid)]
    for pid in dead:
        mark_process_dead(pid, directory)
    return len(dead)


def multiprocess_dir(settings: Settings) -> str | None:
    """Where this process's values go and a scrape reads: ``metrics_dir``, else PROMETHEUS_MULTIPROC_DIR, else none."""
    return settings.metrics_dir or os.environ.get(MULTIPROC_ENV) or None


def open_multiprocess_dir(settings: Settings) -> MultiprocessDir:
    """The supervisor's directory: ``metrics_dir`` prepared, or a fresh temporary one.

    Without ``metrics_dir`` every supervisor gets a directory of its own, so
    that two supervisors on one host never share one.
    """
    if settings.metrics_dir:
        return prepare_multiprocess_dir(settings.metrics_dir)
    held = prepare_multiprocess_dir(tempfile.mkdtemp(prefix="watchtower-metrics-"))
    held._remove = True
    return held


def mark_process_dead(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Forget the live gauges of the exited process ``pid``; fold its counters into the archive.

    Call it for every child that exits, whatever the cause (clean exit, crash,
    SIGKILL, memory limit), after reaping it and before starting its
    replacement: without it, the in-progress gauge keeps counting the
    attempts the dead process was running.  Its counters and histograms keep
    their values (in the archive files).  ``path`` defaults to
    ``PROMETHEUS_MULTIPROC_DIR``; without either, there is nothing to do.
    """
    directory = os.fspath(path) if path is not None else os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    with _scrape_lock(directory, fcntl.LOCK_EX):
        internals.forget_live_gauges(pid, directory)  # the app's live gauges
        for live in internals.live_gauge_files(directory, file_owner(pid)):
            os.remove(live)  # Watchtower's
        if _alive(pid):
            # Not dead (or the pid is already someone else's): its files
            # may still be written, so they stay where they are.
            return
        for typ in internals.KEPT_TYPES:
            for owner in (str(pid), file_owner(pid)):
                _fold(directory, typ, owner)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _fold(directory: str, typ: str, owner: str) -> None:
    """Add ``TYP_OWNER.db``'s values into ``TYP_dead.db`` and remove it (under the exclusive lock)."""
    dead = internals.metric_file(directory, typ, owner)
    if not os.path.exists(dead):
        return
    archive = internals.metric_file(directory, typ, _ARCHIVE)
    totals: dict[str, float] = {}
    for file in (archive, dead):
        if os.path.exists(file):
            for key, value, _timestamp, _pos in internals.read_file(file):
                totals[key] = totals.get(key, 0.0) + value
    # Written aside (no scrape globs *.tmp), then renamed over the archive.
    partial = archive + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(partial)
    internals.write_file(partial, totals.items())
    os.replace(partial, archive)
    os.remove(dead)


def read_metrics(directory: str) -> list[Any]:
    """The metric families of every process's files in ``directory``, merged (see the module doc)."""
    with _scrape_lock(directory, fcntl.LOCK_SH):
        files = internals.scraped_files(directory)
        totals: dict[tuple[str, str], float] = {}
        others = []
        for file in files:
            typ, mode = internals.file_kind(file)
            if typ == "gauge" and mode not in internals.SUMMED_GAUGE_MODES:
                others.append(file)
                continue
            try:
                entries = _read_file(file)
            except FileNotFoundError:
                continue  # a live gauge's file, removed by mark_process_dead of another process
            for key, value, _timestamp, _pos in entries:
                slot = (typ, key)
                totals[slot] = totals.get(slot, 0.0) + value
        found = families(totals)
        if others:
            found.extend(internals.merge_files(others))
    return found


# A key's JSON parsed once per process: [metric name, sample name, labels, help].
_parsed_keys: dict[str, tuple[str, str, tuple[tuple[str, str], ...], str]] = {}
_PARSED_KEYS_LIMIT = 200_000


def _read_file(file: str) -> Any:
    return internals.read_file(file)


def _parse(key: str) -> tuple[str, str, tuple[tuple[str, str], ...], str]:
    parsed = _parsed_keys.get(key)
    if parsed is None:
        if len(_parsed_keys) >= _PARSED_KEYS_LIMIT:
            _parsed_keys.clear()
        metric_name, name, labels, help_text = internals.parse_key(key)
        parsed = _parsed_keys[key] = (metric_name, name, tuple(sorted(labels.items())), help_text)
    return parsed


def families(totals: dict[tuple[str, str], float]) -> list[Any]:
    """Metric families from per-key totals; histogram buckets made cumulative, with their _count."""
    floatToGoString = internals.go_float_formatter()
    families: dict[str, Any] = {}
    buckets: dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]] = {}
    for (typ, key), value in totals.items():
        metric_name, name, labels, help_text = _parse(key)
        family = families.get(metric_name)
        if family is None:
            family = families[metric_name] = internals.new_family(metric_name, help_text, typ)
        if typ == "histogram" and name.endswith("_bucket"):
            bound = next(float(v) for k, v in labels if k == "le")
            series = buckets.setdefault((metric_name, tuple(kv for kv in labels if kv[0] != "le")), {})
            series[bound] = series.get(bound, 0.0) + value
            continue
        family.add_sample(name, dict(labels), value)
    for (metric_name, labels), series in buckets.items():
        family = families[metric_name]
        cumulative = 0.0
        for bound in sorted(series):
            cumulative += series[bound]
            family.add_sample(metric_name + "_bucket", {**dict(labels), "le": floatToGoString(bound)}, cumulative)
        family.add_sample(metric_name + "_count", dict(labels), cumulative)
    return list(families.values())


@contextlib.contextmanager
def _scrape_lock(directory: str, mode: int) -> Iterator[None]:
    try:
        fd = os.open(os.path.join(directory, _SCRAPE_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        # A directory this process cannot write: read without the lock
        # (a scrape may then rarely miss or double one dead process).
        yield
        return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # also releases the lock
