"""Loading the user's app module: the module that sets the broker and declares actors.

Written as the ``dramatiq`` command takes it: ``package.module`` (the broker
is whatever the module set with ``dramatiq.set_broker``, or Dramatiq's
default) or ``package.module:name`` (the broker is that attribute).

As with ``dramatiq``, the commands that take an app put the current
directory first on ``sys.path`` (``--path DIR``, repeatable, puts those
directories there instead): a ``tasks.py`` beside you is importable as
``tasks`` without ``PYTHONPATH``.  Every command that cannot import the app
says so in the same words (:func:`import_error`): the module, the error and
the directories it added to ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable

import dramatiq

from .errors import AppImportError

__all__ = ["load_app", "find_app", "add_import_paths", "import_error"]

# The directories add_import_paths put on sys.path in this process, for the
# error text: sys.path is the process's own, and so is this record of it.
_added: list[str] = []


def add_import_paths(paths: Iterable[str] | None = None) -> list[str]:
    """Put ``paths`` (default: the current directory) first on ``sys.path``; returns them, absolute.

    In the order given, the first one first (``--path a --path b`` looks in
    ``a`` before ``b``); a directory already there is moved to the front.
    """
    chosen = [os.path.abspath(path) for path in (paths or [os.curdir])]
    for path in reversed(chosen):
        while path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
        if path not in _added:
            _added.append(path)
    return chosen


def import_error(module_name: str, error: BaseException) -> AppImportError:
    """The one error text for an app module that cannot be imported.

    It names the module, the error (and where it was raised, when that was
    inside the module rather than at its import) and the directories put on
    ``sys.path`` for the app.
    """
    # The last frame of the app's own code: the import machinery's frames
    # (and this module's) say nothing about where the app went wrong.
    machinery = (os.path.dirname(importlib.__file__) + os.sep, __file__)
    frames = [
        frame for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith("<frozen") and not frame.filename.startswith(machinery)
    ]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    if _added:
        looked = f"; added to sys.path: {', '.join(_added)} (--path changes it)"
    else:
        looked = "; check its name and that its directory is on sys.path"
    return AppImportError(
        f"cannot import app module {module_name!r} (setting 'app'): {type(error).__name__}: {error}{where}{looked}"
    )


def _no_app() -> AppImportError:
    return AppImportError(
        "no app module given: set 'app' (WATCHTOWER_APP, --app, or APP as in watchtower supervise tasks) "
        "to the module that declares your actors"
    )


def find_app(spec: str | None) -> str:
    """The module named by ``spec``, if it can be found; it is not imported.

    A supervisor checks its app this way and leaves the import to its
    workers: an app that raises on import makes them crash-loop, which the
    supervisor shows with their error.
    """
    if not spec or not isinstance(spec, str):
        raise _no_app()
    module_name = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError as error:  # a parent package is missing
        raise import_error(module_name, error) from None
    except Exception:  # a parent package that raises: the workers will say so
        return module_name
    if found is None:
        raise import_error(module_name, ModuleNotFoundError(f"No module named {module_name!r}"))
    return module_name


def load_app(spec: str | None) -> dramatiq.Broker:
    """Import the app module named by ``spec`` and return its broker.

    Raises AppImportError with a one-line reason when the module is missing,
    raises on import, or names no broker.
    """
    if not spec or not isinstance(spec, str):
        raise _no_app()
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as error:  # an app may raise anything, even SystemExit, on import
        if isinstance(error, KeyboardInterrupt):
            raise
        raise import_error(module_name, error) from error
    if attribute:
        broker = getattr(module, attribute, None)
        if not isinstance(broker, dramatiq.Broker):
            raise AppImportError(f"app {spec!r}: {module_name}.{attribute} is not a Dramatiq broker")
        dramatiq.set_broker(broker)
        return broker
    return dramatiq.get_broker()
