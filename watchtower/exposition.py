"""One scrape of Watchtower's metrics: the Prometheus text, built from a fresh registry.

What a scrape shows (see :mod:`watchtower.metrics` for what is counted where):

- the multiprocess directory's files (:func:`~watchtower.multiproc.multiprocess_dir`,
  read by :func:`~watchtower.multiproc.read_metrics`), merged with the
  values this process keeps in memory (a supervisor's own), each family
  once;
- the values read from the ledger and the broker (:mod:`watchtower.scrape`);
- the build info.

Never prometheus-client's default registry, so that nothing is counted
twice and nothing the app registers there leaks in.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import multiproc
from . import prometheus_internals as internals
from .metrics import made_process_metrics

if TYPE_CHECKING:
    from .config import Settings

__all__ = ["CONTENT_TYPE", "exposition"]

logger = logging.getLogger(__name__)

#: The classic text format, version 0.0.4, that ``generate_latest`` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Merged:
    """Metric families from several collectors, with equal series added up.

    The multiprocess files and this process's in-memory metrics may both
    hold a family (a supervisor that imported prometheus-client too early);
    a scrape must show each family once.  ``_created`` samples are dropped:
    multiprocess mode has none, and they cannot be added up.
    """

    def __init__(self, collectors: Sequence[Any]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for collector in self._collectors:
            for family in collector.collect():
                if family.name not in families:
                    families[family.name] = internals.new_family(family.name, family.documentation, family.type,
                                                                 family.unit)
                    values[family.name] = {}
                series = values[family.name]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    series[key] = series.get(key, 0.0) + sample.value
        for name, family in families.items():
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


class _Files:
    """The multiprocess directory's files (see :func:`watchtower.multiproc.read_metrics`)."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Any]:
        yield from multiproc.read_metrics(self._directory)


class _Local:
    """This process's own metric objects, unless the scraped files already hold them."""

    def __init__(self, directory: str | None) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Any]:
        metrics = made_process_metrics()
        if metrics is None:
            return
        if metrics.directory is not None and self._directory is not None and \
                os.path.samefile(metrics.directory, self._directory):
            return  # the files hold them
        yield from metrics.collect()


def exposition(settings: Settings, *, broker: Any = None, supervisor: str | None = None) -> tuple[bytes, str]:
    """One scrape: the Prometheus text format and its content type.

    Built from a fresh registry: the multiprocess directory's files (if any,
    see :func:`~watchtower.multiproc.multiprocess_dir`) merged with this process's own values, plus
    the values read from the ledger and the broker (cached briefly, see
    :mod:`watchtower.scrape`) and the build info.
    """
    from prometheus_client import CollectorRegistry, generate_latest

    from .scrape import sources_for

    registry = CollectorRegistry(auto_describe=False)
    directory = multiproc.multiprocess_dir(settings)
    collectors: list[Any] = [_Local(directory)]
    if directory:
        if os.path.isdir(directory):
            collectors.insert(0, _Files(directory))
        else:
            logger.warning("metrics_dir %s does not exist: serving this process's metrics only", directory)
    registry.register(_Merged(collectors))
    registry.register(sources_for(settings, broker=broker, supervisor=supervisor))
    registry.register(_BuildInfo())
    # The classic text format, version 0.0.4: every name here is a legacy
    # name, and every Prometheus release reads it.
    return generate_latest(registry), CONTENT_TYPE


class _BuildInfo:
    def collect(self) -> Iterator[Any]:
        import dramatiq
        from prometheus_client.core import GaugeMetricFamily

        from . import __version__

        family = GaugeMetricFamily(
            "watchtower_build_info", "Versions of Watchtower, Python and Dramatiq (always 1).",
            labels=("version", "python_version", "dramatiq_version"),
        )
        family.add_metric((__version__, platform.python_version(), dramatiq.__version__), 1.0)
        yield family

