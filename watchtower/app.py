"""Loading the user's app module: the module that sets the broker and declares actors.

Written as the ``dramatiq`` command takes it: ``package.module`` (the broker
is whatever the module set with ``dramatiq.set_broker``, or Dramatiq's
default) or ``package.module:name`` (the broker is that attribute).
"""

from __future__ import annotations

import importlib
import traceback

import dramatiq

from .errors import AppImportError

__all__ = ["load_app"]


def load_app(spec: str | None) -> dramatiq.Broker:
    """Import the app module named by ``spec`` and return its broker.

    Raises AppImportError with a one-line reason when the module is missing,
    raises on import, or names no broker.
    """
    if not spec or not isinstance(spec, str):
        raise AppImportError("no app module given: set 'app' (or --app) to the module that declares your actors")
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as error:  # an app may raise anything, even SystemExit, on import
        if isinstance(error, KeyboardInterrupt):
            raise
        last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
        raise AppImportError(
            f"cannot import app module {module_name!r}: {type(error).__name__}: {error}{where}"
        ) from error
    if attribute:
        broker = getattr(module, attribute, None)
        if not isinstance(broker, dramatiq.Broker):
            raise AppImportError(f"app {spec!r}: {module_name}.{attribute} is not a Dramatiq broker")
        dramatiq.set_broker(broker)
        return broker
    return dramatiq.get_broker()
