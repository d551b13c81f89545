"""Counters, gauges and histograms whose values stay where Watchtower put them.

prometheus-client's own metric objects keep their values where the process's
``PROMETHEUS_MULTIPROC_DIR`` pointed when ``prometheus_client.values`` was
first imported, and open each file in whatever directory the variable names
at that moment.  Any code in the process can move it: Dramatiq's Prometheus
middleware points it at its own directory in ``after_process_boot``, and a
worker under ``watchtower supervise`` then wrote Watchtower's job counters
where the supervisor never looks.

The objects here take their place for Watchtower's own metrics.  Each
:class:`Values` is given its directory (or none: values in memory) when it is
made and keeps it; no environment variable is read here.  In a directory, the
values are written in prometheus-client's multiprocess file format (through
:mod:`watchtower.prometheus_internals`), so that :func:`watchtower.multiproc.read_metrics`
and the library's own ``MultiProcessCollector`` read them, in files of their
own (``counter_watchtower-<pid>.db``...): the app's prometheus-client metrics
may write ``counter_<pid>.db`` in the same directory, and two writers must
never share a file.

Only what Watchtower needs is here: labelled or plain counters, ``livesum``
gauges and histograms, no exemplars and no ``_created`` samples.  After a
``fork()`` the child starts from zero in files of its own pid (the parent's
values stay the parent's), as prometheus-client's multiprocess values do.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from . import prometheus_internals as internals

__all__ = ["Counter", "Gauge", "Histogram", "Values", "file_owner"]

#: What tells Watchtower's files from the library's: ``counter_watchtower-<pid>.db``.
FILE_OWNER = "watchtower"


def file_owner(pid: int) -> str:
    """The process part of the name of a Watchtower file of process ``pid``."""
    return f"{FILE_OWNER}-{pid}"


class _Value:
    """One float of one series, in memory and (with a directory) in its file."""

    __slots__ = ("file", "key", "prefix", "value", "values")

    def __init__(self, values: Values, prefix: str, key: str) -> None:
        self.values = values
        self.prefix = prefix  # the file's type part: counter, histogram, gauge_livesum
        self.key = key
        self.value = 0.0
        self.file: Any = None
        values._attach(self)

    def inc(self, amount: float) -> None:
        with self.values.lock:
            self.value += amount
            if self.file is not None:
                self.file.write_value(self.key, self.value, 0.0)

    def set(self, value: float) -> None:
        with self.values.lock:
            self.value = value
            if self.file is not None:
                self.file.write_value(self.key, value, 0.0)


class Values:
    """Where one process keeps the values of its metrics: memory, or files in ``directory``.

    Every series is written (at 0) as soon as it is made, so that a scrape
    shows it before its first event.
    """

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self._series: list[_Value] = []
        self._files: dict[str, Any] = {}
        self._pid = os.getpid()
        _every.add(self)

    def _attach(self, value: _Value) -> None:
        with self.lock:
            self._series.append(value)
            self._open(value)

    def _open(self, value: _Value) -> None:
        """Point ``value`` at its file (none in memory mode) and write it there (lock held)."""
        if self.directory is None:
            return
        file = self._files.get(value.prefix)
        if file is None:
            typ, _, mode = value.prefix.partition("_")
            path = internals.metric_file(self.directory, typ, file_owner(self._pid), mode or None)
            file = self._files[value.prefix] = internals.open_value_file(path)
        value.file = file
        file.write_value(value.key, value.value, 0.0)

    def totals(self) -> dict[tuple[str, str], float]:
        """``{(type, key): value}`` of every series, as :func:`watchtower.multiproc.families` takes them."""
        with self.lock:
            return {(value.prefix.partition("_")[0], value.key): value.value for value in self._series}

    def close(self) -> None:
        """Close the files (the values stay readable in them)."""
        with self.lock:
            for file in self._files.values():
                file.close()
            self._files.clear()
            for value in self._series:
                value.file = None

    def _after_fork(self) -> None:
        """In a forked child: a new lock, zeros, and files of the child's own pid.

        The parent's files are mapped shared: writing through them would
        change the parent's values.  Closing them here unmaps them in the
        child only.  The lock may have been held by a thread that the child
        does not have.
        """
        self.lock = threading.Lock()
        for file in self._files.values():
            file.close()
        self._files = {}
        self._pid = os.getpid()
        for value in self._series:
            value.value = 0.0
            value.file = None
            self._open(value)


_every: weakref.WeakSet[Values] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for values in list(_every):
        values._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


class _Metric:
    """What counters, gauges and histograms share: a name, help, label names and children."""

    typ = ""
    prefix = ""

    def __init__(self, values: Values, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.values = values
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._plain = None if self.labelnames else self._child(())

    def labels(self, *labelvalues: str) -> Any:
        """The child for one label set, made (and written at 0) on first use."""
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}, given {labelvalues!r}")
        child = self._children.get(labelvalues)
        if child is None:
            with self._lock:
                child = self._children.get(labelvalues)
                if child is None:
                    child = self._children[labelvalues] = self._child(tuple(str(v) for v in labelvalues))
        return child

    def _child(self, labelvalues: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def _value(self, sample: str, labelnames: Sequence[str], labelvalues: Sequence[str]) -> _Value:
        key = internals.value_key(self._family_name(), sample, labelnames, labelvalues, self.documentation)
        return _Value(self.values, self.prefix, key)

    def _family_name(self) -> str:
        return self.name


class Counter(_Metric):
    """A counter; its name ends in ``_total`` (the family name is without it, as Prometheus has it)."""

    typ = "counter"
    prefix = "counter"

    def __init__(self, values: Values, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r}: a counter's name ends in _total")
        super().__init__(values, name, documentation, labelnames)

    def _family_name(self) -> str:
        return self.name[: -len("_total")]

    def _child(self, labelvalues: tuple[str, ...]) -> _CounterChild:
        return _CounterChild(self._value(self.name, self.labelnames, labelvalues))

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (a counter without labels)."""
        assert self._plain is not None, f"{self.name} has labels: use .labels(...)"
        self._plain.inc(amount)


class _CounterChild:
    __slots__ = ("_value",)

    def __init__(self, value: _Value) -> None:
        self._value = value

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter can only be increased by a non-negative amount")
        self._value.inc(amount)


class Gauge(_Metric):
    """A gauge summed over the live processes (prometheus-client's ``livesum`` mode)."""

    typ = "gauge"
    prefix = "gauge_livesum"

    def _child(self, labelvalues: tuple[str, ...]) -> _GaugeChild:
        return _GaugeChild(self._value(self.name, self.labelnames, labelvalues))

    def set(self, value: float) -> None:
        """Set the value (a gauge without labels)."""
        assert self._plain is not None, f"{self.name} has labels: use .labels(...)"
        self._plain.set(value)


class _GaugeChild:
    __slots__ = ("_value",)

    def __init__(self, value: _Value) -> None:
        self._value = value

    def inc(self, amount: float = 1.0) -> None:
        self._value.inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._value.inc(-amount)

    def set(self, value: float) -> None:
        self._value.set(value)


class Histogram(_Metric):
    """A histogram with fixed buckets (``+Inf`` added); files hold each bucket's own count."""

    typ = "histogram"
    prefix = "histogram"

    def __init__(self, values: Values, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float]) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name!r}: buckets must be distinct and in increasing order")
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        super().__init__(values, name, documentation, labelnames)

    def _child(self, labelvalues: tuple[str, ...]) -> _HistogramChild:
        to_text = internals.go_float_formatter()
        bucket_labels = (*self.labelnames, "le")
        buckets = [self._value(self.name + "_bucket", bucket_labels, (*labelvalues, to_text(bound)))
                   for bound in self.bounds]
        return _HistogramChild(self.bounds, buckets, self._value(self.name + "_sum", self.labelnames, labelvalues))

    def observe(self, amount: float) -> None:
        """Count one observation (a histogram without labels)."""
        assert self._plain is not None, f"{self.name} has labels: use .labels(...)"
        self._plain.observe(amount)


class _HistogramChild:
    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, bounds: tuple[float, ...], buckets: list[_Value], total: _Value) -> None:
        self._bounds = bounds
        self._buckets = buckets
        self._sum = total

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        for bound, bucket in zip(self._bounds, self._buckets, strict=True):
            if amount <= bound:
                bucket.inc(1.0)
                return
