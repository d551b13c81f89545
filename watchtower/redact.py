"""Hiding secret-looking fields of a stored message before the API or the command line shows it.

A field is hidden when its name contains one of the configured patterns
(setting ``redact``), compared case-insensitively: ``password`` hides
``password``, ``db_password`` and ``PasswordHash``.  Names are the keys of
any mapping anywhere in the message's arguments, keyword arguments and
options, however deeply nested.  Positional arguments have no name and
are shown as they are.

Only the response is redacted: the ledger keeps the message intact, so a
retry sends the real values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["Redactor", "REDACTED"]

#: What a hidden value is shown as.
REDACTED = "[redacted]"

# Deeper structures than this are cut off rather than walked (a message is
# JSON, so this only guards against pathological nesting).
_MAX_DEPTH = 64


class Redactor:
    """Replaces the values of secret-looking fields with ``REDACTED``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(pattern.casefold() for pattern in patterns if pattern)

    def is_secret(self, name: object) -> bool:
        """Whether a field called ``name`` is hidden."""
        if not isinstance(name, str):
            return False
        folded = name.casefold()
        return any(pattern in folded for pattern in self.patterns)

    def redact(self, value: Any, depth: int = 0) -> Any:
        """A copy of ``value`` with every secret-looking field's value hidden."""
        if depth > _MAX_DEPTH:
            return REDACTED
        if isinstance(value, dict):
            return {
                key: REDACTED if self.is_secret(key) else self.redact(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.redact(item, depth + 1) for item in value]
        return value
