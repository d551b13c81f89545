"""``watchtower supervise --watch DIR``: start the workers afresh when the code under DIR changes.

For development, as ``dramatiq --watch``: a thread watches the directories
(Python files only; ``__pycache__``, ``.git``, virtualenvs and the like are
left out) and, at the first change, asks the supervisor to reload (see
:meth:`watchtower.supervisor.Supervisor.request_reload`): the workers finish
their jobs in hand and stop, and the command starts itself again in the
same process, so that new workers import the new code.

Watching is done by watchfiles (the ``watch`` extra): its Rust core uses
inotify (polling where there is none), groups the writes of one save into
one batch, and stops on an event, which is what a hand-written loop around
the operating system's interfaces would have to do.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Sequence

from .errors import ConfigError

__all__ = ["CodeWatcher", "require_watchfiles"]

logger = logging.getLogger(__name__)

#: Changed files named in the log line at most.
SHOWN = 3


def require_watchfiles() -> None:
    """Raise a ConfigError saying what to install when watchfiles is missing."""
    if importlib.util.find_spec("watchfiles") is None:
        raise ConfigError(
            "--watch needs the watchfiles package: pip install 'dramatiq-watchtower[watch]' (or pip install watchfiles)"
        )


class CodeWatcher:
    """Calls ``on_change`` once, from a thread of its own, when a Python file under ``directories`` changes.

    Once is enough: the change makes the supervisor start afresh, with a
    new watcher; further saves while the workers finish their jobs must not
    hurry them.
    """

    def __init__(self, directories: Sequence[str], on_change: Callable[[list[str]], None]) -> None:
        require_watchfiles()
        self.directories = [os.path.abspath(directory) for directory in directories]
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchtower-watch", daemon=True)

    def start(self) -> None:
        """Start watching (returns at once)."""
        self._thread.start()
        logger.info("watching %s for changes to Python files (--watch: a change reloads the workers)",
                    ", ".join(self.directories))

    def stop(self) -> None:
        """Stop watching and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _watch(self) -> None:
        from watchfiles import PythonFilter, watch

        try:
            for changes in watch(*self.directories, watch_filter=PythonFilter(), stop_event=self._stop,
                                 raise_interrupt=False):
                paths = sorted({os.path.relpath(path) for _change, path in changes})
                shown = ", ".join(paths[:SHOWN]) + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")
                logger.info("%s changed: reloading the workers", shown)
                self.on_change(paths)
                return
        except Exception:  # the pool runs on without reloads; the log says why
            logger.exception("--watch stopped watching %s", ", ".join(self.directories))
