"""Every undocumented part of prometheus-client that Watchtower relies on, in one place.

Read off prometheus-client 0.26.0 (``values.py``, ``mmap_dict.py``,
``multiprocess.py``, ``utils.py``).  Any minor release may move them, hence
the upper bound on ``prometheus-client`` in pyproject.toml;
``tests/test_prometheus_internals.py`` has one test per item below, named
after it, run against the installed library with real files and processes.

- the multiprocess file names: ``counter_<pid>.db``, ``histogram_<pid>.db``,
  ``summary_<pid>.db``, ``gauge_<mode>_<pid>.db`` (:func:`metric_file`,
  :func:`file_kind`, :func:`file_process`, :func:`metric_files`); a scrape
  (``MultiProcessCollector``) reads every ``*.db`` file of the directory
  (:func:`scraped_files`);
- ``prometheus_client.multiprocess.mark_process_dead(pid, path)``
  (:func:`forget_live_gauges`) removes the process's live gauges' files,
  ``gauge_live<mode>_<pid>.db`` (:func:`live_gauge_files`), and nothing else: the files of the types in
  :data:`KEPT_TYPES` (and of the other gauge modes) stay;
- the merge adds up the values of all files for the gauge modes in
  :data:`SUMMED_GAUGE_MODES`, as for counters, histograms and summaries;
- ``prometheus_client.mmap_dict.MmapedDict``: its
  ``read_all_values_from_file(path)`` yields ``(key, value, timestamp,
  position)`` (:func:`read_file`), and ``MmapedDict(path)`` /
  ``write_value(key, value, timestamp)`` / ``close()`` write a file the
  library reads back (:func:`write_file`, and :func:`open_value_file` for
  :mod:`watchtower.instruments`' live files);
- the key of each value: the JSON list ``[metric name, sample name, labels,
  help]`` made by ``mmap_dict.mmap_key`` (:func:`value_key`,
  :func:`parse_key`); a histogram's files hold one value per bucket (not
  cumulative) with an ``le`` label, and ``_sum``, never ``_count``; a
  counter's metric name is without ``_total``, its sample's with it;
- ``MultiProcessCollector.merge(files, accumulate=True)``: the library's own
  merge of some files into metric families (:func:`merge_files`);
- ``prometheus_client.utils.floatToGoString``: how a bucket bound is written
  in the ``le`` label (:func:`go_float_formatter`);
- ``prometheus_client.metrics_core.Metric(name, documentation, type, unit)``
  with ``add_sample(name, labels, value)``, ``name``, ``documentation``,
  ``type``, ``unit`` and ``samples`` (each with ``name``, ``labels``,
  ``value``): a family that a custom collector yields and
  ``generate_latest`` writes (:func:`new_family`).

This module imports prometheus-client only inside its functions, so that
importing Watchtower never imports it.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "KEPT_TYPES", "SUMMED_GAUGE_MODES", "file_kind", "file_process", "forget_live_gauges", "go_float_formatter",
    "live_gauge_files",
    "merge_files", "metric_file", "metric_files", "new_family", "open_value_file", "parse_key", "read_file",
    "scraped_files", "value_key", "write_file",
]

#: The types whose values outlive their process: ``mark_process_dead`` leaves their files.
KEPT_TYPES = ("counter", "histogram", "summary")
#: The gauge modes whose merged value is the sum over the files.
SUMMED_GAUGE_MODES = frozenset({"sum", "livesum"})
# The files the library writes, one per process and type (gauges: and mode).
_METRIC_FILES = ("counter_*.db", "gauge_*.db", "histogram_*.db", "summary_*.db")


def metric_file(directory: str | os.PathLike[str], typ: str, pid: int | str, mode: str | None = None) -> str:
    """The file in which process ``pid`` keeps its values of type ``typ`` (gauges: of ``mode``)."""
    prefix = f"{typ}_{mode}" if typ == "gauge" else typ
    return os.path.join(os.fspath(directory), f"{prefix}_{pid}.db")


def file_kind(path: str) -> tuple[str, str | None]:
    """The type of the values in a multiprocess file, and for a gauge its mode."""
    parts = os.path.basename(path).split("_")
    return parts[0], (parts[1] if parts[0] == "gauge" else None)


def file_process(path: str) -> str:
    """The process part of a multiprocess file's name: ``123`` of ``gauge_livesum_123.db``."""
    return os.path.basename(path).removesuffix(".db").rsplit("_", 1)[-1]


def metric_files(directory: str | os.PathLike[str]) -> list[str]:
    """Every file of ``directory`` named as the library names its per-process files."""
    return [file for pattern in _METRIC_FILES for file in glob.glob(os.path.join(directory, pattern))]


def scraped_files(directory: str | os.PathLike[str]) -> list[str]:
    """Every file of ``directory`` that the library's ``MultiProcessCollector`` reads."""
    return glob.glob(os.path.join(directory, "*.db"))


def live_gauge_files(directory: str | os.PathLike[str], process: int | str) -> list[str]:
    """The files of ``process``'s live gauges (``livesum``, ``liveall``...), which go when it dies."""
    return glob.glob(metric_file(directory, "gauge", process, "live*"))


def forget_live_gauges(pid: int, directory: str | os.PathLike[str]) -> None:
    """The library's ``mark_process_dead``: remove the live gauges' files of the exited process ``pid``."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, os.fspath(directory))


def read_file(path: str) -> Iterable[tuple[str, float, float, int]]:
    """``(key, value, timestamp, position)`` of every value in a multiprocess file."""
    from prometheus_client.mmap_dict import MmapedDict

    return MmapedDict.read_all_values_from_file(path)  # type: ignore[no-any-return]


def write_file(path: str, values: Iterable[tuple[str, float]]) -> None:
    """Write a multiprocess file holding ``(key, value)`` pairs (timestamps 0), as the library would."""
    from prometheus_client.mmap_dict import MmapedDict

    file = MmapedDict(path)
    try:
        for key, value in values:
            file.write_value(key, value, 0.0)
    finally:
        file.close()


def parse_key(key: str) -> tuple[str, str, dict[str, str], str]:
    """A value's key: (metric name, sample name, labels, help text)."""
    metric_name, name, labels, help_text = json.loads(key)
    return metric_name, name, labels, help_text


def merge_files(files: Sequence[str]) -> list[Any]:
    """The library's own merge of multiprocess files into metric families (values added up)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    return list(MultiProcessCollector.merge(files, accumulate=True))


def new_family(name: str, documentation: str, typ: str, unit: str = "") -> Any:
    """An empty metric family, to be filled with ``add_sample(name, labels, value)`` and yielded by a collector."""
    from prometheus_client.metrics_core import Metric

    return Metric(name, documentation, typ, unit)


def go_float_formatter() -> Callable[[float], str]:
    """The function writing a float as Prometheus does in a label (``0.005``, ``+Inf``).

    Handed out rather than called here: a scrape formats every bucket bound.
    """
    from prometheus_client.utils import floatToGoString

    return floatToGoString  # type: ignore[no-any-return]


def value_key(metric_name: str, name: str, labelnames: Sequence[str], labelvalues: Sequence[str],
              help_text: str) -> str:
    """The key under which a multiprocess file keeps one value (see :func:`parse_key`)."""
    from prometheus_client.mmap_dict import mmap_key

    return mmap_key(metric_name, name, list(labelnames), list(labelvalues), help_text)  # type: ignore[no-any-return]


def open_value_file(path: str) -> Any:
    """A multiprocess file opened for writing, created if missing.

    It has ``write_value(key, value, timestamp)`` and ``close()``; each write
    lands in the shared mapping at once, where a scrape in another process
    reads it.
    """
    from prometheus_client.mmap_dict import MmapedDict

    return MmapedDict(path)
